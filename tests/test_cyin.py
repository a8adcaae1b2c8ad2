"""CyIN: shapes, masks, translation standing in for missing modalities, cycle loss, IB terms,
determinism and a short run through the training engine."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

import msakit
from msakit.corrupt import parse_protocol
from msakit.data.batch import Batch, Corruption, SplitData, collate
from msakit.data.dataset import MSADataset
from msakit.models import create_model
from msakit.models.layers import window_mean as pool_steps

DIMS = {"text": 12, "audio": 5, "vision": 7}
LENS = {"text": 6, "audio": 30, "vision": 24}
SMALL = dict(d=16, latent=8, heads=2, fusion_heads=2, max_steps=8, cra_hidden=32, dropout=0.0)


def make_split(n: int, seed: int) -> SplitData:
    rng = np.random.default_rng(seed)
    x = {m: rng.normal(size=(n, LENS[m], DIMS[m])).astype("f") for m in DIMS}
    lengths = {m: rng.integers(1, LENS[m] + 1, n) for m in DIMS}
    y = np.tanh(x["text"][:, 0, 0] + 0.5 * x["audio"][:, 0, 0]) * 2.5
    for m in DIMS:  # zero beyond each length, as readers do
        x[m][np.arange(LENS[m])[None, :] >= lengths[m][:, None]] = 0.0
    return SplitData(x=x, lengths=lengths, y=y, ids=[f"{seed}-{i}" for i in range(n)])


def hide(batch: Batch, m: str, rows: list[int]) -> Batch:
    present = dict(batch.present)
    mask = dict(batch.mask)
    p = present[m].clone()
    p[rows] = False
    present[m] = p
    mask[m] = mask[m] & p[:, None]
    return batch.replace(present=present, mask=mask)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: one thread avoids OpenMP barrier stalls on a shared 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def batch() -> Batch:
    b = collate(make_split(10, 0), np.arange(10))
    b = hide(b, "audio", [1, 4])
    b = hide(b, "vision", [4, 5])
    for m in DIMS:  # sample 9 observes nothing at all
        b = hide(b, m, [9])
    return b


def model(**kw):
    torch.manual_seed(0)
    return create_model("cyin", DIMS, **{**SMALL, **kw})


def test_shapes_and_finite(batch):
    net = model().eval()
    out = net(batch)
    B, M, dz = batch.size, 3, SMALL["latent"]
    assert out.pred.shape == (B,)
    assert torch.isfinite(out.pred).all()
    assert out.extras["z_lab"].shape == (B, M, dz)
    assert out.extras["translated"].shape == (B, M, dz)
    assert out.extras["lab_pred"].shape == (B, M)
    assert out.extras["enc"]["vision"]["z_tok"].shape[1] <= SMALL["max_steps"]
    assert out.extras["avail"][9].sum() == 0 and out.extras["avail"][0].all()


def test_pool_steps_is_masked_mean_per_sample():
    x = torch.arange(2 * 10, dtype=torch.float32).view(2, 10, 1)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[0, 6:] = False  # sample 0: 6 steps -> windows of 2 with k=4
    mask[1, 3] = False
    pooled, pm = pool_steps(x, mask, 4)
    assert pooled[0, :3, 0].tolist() == [0.5, 2.5, 4.5] and pm[0].tolist() == [1, 1, 1, 0]
    # sample 1: 10 steps -> windows of 3; step 3 is masked (never read)
    assert pooled[1, :, 0].tolist() == pytest.approx([11.0, 14.5, 17.0, 19.0])
    x2 = x.clone()
    x2[1, 3] = float("nan")
    x2[0, 7:] = 1e6
    assert torch.equal(pool_steps(x2, mask, 4)[0], pooled)


def test_masked_content_cannot_change_output(batch):
    net = model().eval()
    ref = net(batch).pred
    x = {}
    for m in DIMS:
        obs = batch.observed(m)
        x[m] = torch.where(obs[..., None], batch.x[m], torch.full_like(batch.x[m], float("nan")))
    out = net(batch.replace(x=x)).pred
    assert torch.equal(out, ref)


def test_translation_replaces_missing_latent(batch):
    net = model().eval()
    out = net(batch)
    ex, a = out.extras, 1  # audio
    assert torch.equal(ex["summary"][1, a], ex["translated"][1, a])  # audio hidden for sample 1
    assert torch.equal(ex["summary"][0, a], ex["z_lab"][0, a])  # observed: its own latent
    assert not torch.allclose(ex["translated"][1, a], ex["z_lab"][1, a])
    # changing the translator moves exactly the samples that miss a modality
    with torch.no_grad():  # not a constant shift: pre-norm layers would cancel that
        bias = net.translator.stages[-1][-1].bias
        bias.add_(torch.randn(bias.shape, generator=torch.Generator().manual_seed(0)))
    pred2 = net(batch).pred
    incomplete = ~ex["avail"].all(1)
    assert torch.allclose(pred2[~incomplete], out.pred[~incomplete])
    assert ((pred2 - out.pred)[incomplete].abs() > 1e-6).all()


def test_loss_terms_named_and_finite(batch):
    net = model().train()
    torch.manual_seed(1)
    out = net(batch)
    losses = net.loss(out, batch)
    assert set(losses) == {"total", "pred", "kl_token", "kl_label", "ib_pred", "trans", "cycle"}
    assert all(torch.isfinite(v) and v.ndim == 0 for v in losses.values())
    assert losses["kl_token"] > 0 and losses["kl_label"] > 0
    c = net.config
    expect = (
        losses["pred"] + c.beta_token * losses["kl_token"] + c.beta_label * losses["kl_label"]
        + c.w_ib * losses["ib_pred"] + c.w_trans * losses["trans"] + c.w_cycle * losses["cycle"]
    )
    assert torch.allclose(losses["total"], expect)


def test_label_level_loss_over_observed_modalities(batch):
    """ib_pred is the task loss of the label-level heads over observed (sample, modality)
    pairs: L1 for regression, cross-entropy on per-modality logits for classification."""
    import torch.nn.functional as F

    net = model().eval()
    with torch.no_grad():
        out = net(batch)
        avail, lp = out.extras["avail"], out.extras["lab_pred"]
        want = (lp - batch.y[:, None]).abs()[avail].mean()
        torch.testing.assert_close(net.loss(out, batch)["ib_pred"], want)
        torch.manual_seed(0)
        clf = create_model("cyin", DIMS, n_classes=4, **SMALL).eval()
        y = torch.arange(batch.size) % 4
        cb = batch.replace(y=y)
        out = clf(cb)
        lp = out.extras["lab_pred"]
        assert out.pred.shape == (batch.size, 4) and lp.shape == (batch.size, 3, 4)
        ce = F.cross_entropy(lp.flatten(0, 1), y.repeat_interleave(3), reduction="none")
        want = ce.view(batch.size, 3)[out.extras["avail"]].mean()
        torch.testing.assert_close(clf.loss(out, cb)["ib_pred"], want)


def test_gradients_reach_every_trainable_parameter(batch):
    net = model().train()
    torch.manual_seed(2)
    net.loss(net(batch), batch)["total"].backward()
    missing = [n for n, p in net.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
    zero = [n for n, p in net.named_parameters() if p.requires_grad and not p.grad.abs().sum() > 0]
    assert not zero


def test_cycle_and_translation_losses_decrease_under_training(batch):
    net = model().train()
    torch.manual_seed(3)
    with torch.no_grad():
        out = net(batch)  # fixed latents; only the translator learns here
    opt = torch.optim.Adam(net.translator.parameters(), lr=3e-3)
    hist = []
    for _ in range(80):
        torch.manual_seed(3)  # the same hiding pattern every step
        trans, cycle = net.translation_losses(out, batch)
        hist.append((trans.item(), cycle.item()))
        opt.zero_grad()
        (trans + cycle).backward()
        opt.step()
    (t0, c0), (t1, c1) = hist[0], hist[-1]
    assert c0 > 0 and t0 > 0
    assert c1 < 0.3 * c0 and t1 < 0.3 * t0


def test_clean_targets_used_in_loss_only(batch):
    net = model().train()
    rec = Corruption(clean=batch, missing_rate={})
    corrupted = hide(batch, "text", [0, 2]).replace(corruption=rec)
    torch.manual_seed(4)
    l1 = net.loss(net(corrupted), corrupted)
    other = corrupted.replace(corruption=Corruption(
        clean=batch.replace(x={**batch.x, "text": batch.x["text"] + 1.0}), missing_rate={}))
    torch.manual_seed(4)
    out2 = net(other)
    net.eval()
    a = net(corrupted).pred
    b = net(other).pred
    net.train()
    assert torch.equal(a, b)  # forward never reads the clean batch
    torch.manual_seed(4)
    l2 = net.loss(out2, other)
    assert l1["trans"] != l2["trans"]  # ... but the translation targets come from it


def test_eval_deterministic_and_batch_independent():
    split = make_split(12, 5)
    net = model().eval()
    full = net(collate(split, np.arange(12))).pred
    again = net(collate(split, np.arange(12))).pred
    assert torch.equal(full, again)
    for i in (0, 7):
        alone = net(collate(split, [i])).pred  # trimmed to its own lengths
        assert alone.item() == pytest.approx(full[i].item(), abs=1e-5)
    pair = net(collate(split, [7, 3])).pred
    assert pair[0].item() == pytest.approx(full[7].item(), abs=1e-5)


def test_short_training_run(tmp_path):
    """Two epochs through ``msakit.train`` with the model's own training corruption."""
    spec = create_model("cyin", DIMS).config.default_corrupt
    assert parse_protocol(spec) is not None
    ds = MSADataset(
        "cyin-tiny", {"train": make_split(48, 1), "valid": make_split(16, 2), "test": make_split(16, 3)}
    )
    summary = msakit.train(
        "cyin", ds, tmp_path, seeds=[7], epochs=2, overrides={**SMALL, "batch_size": 16}
    )
    assert np.isfinite(summary["test"]["mae"]["mean"])
    rows = list(csv.DictReader(open(tmp_path / "seed_7" / "logs" / "metrics.csv")))
    for term in ("trans", "cycle", "kl_token", "kl_label", "ib_pred"):
        vals = [float(r[f"train/{term}"]) for r in rows if r.get(f"train/{term}")]
        assert len(vals) == 2 and all(np.isfinite(vals)), term
    assert json.loads((tmp_path / "seed_7" / "config.json").read_text())["model"] == "cyin"
