"""LNLN: the completeness target, gradient reversal, clean-input reconstruction targets, the
four named loss terms, masks, shapes, and a short run through the training engine."""

from __future__ import annotations

import csv
import json
from dataclasses import replace

import numpy as np
import pytest
import torch

import msakit
from msakit.data.batch import Batch, Corruption, SplitData
from msakit.data.dataset import MSADataset
from msakit.models import create_model
from msakit.models.layers import grad_reverse
from msakit.train.engine import LitMSA, TrainConfig

DIMS = {"text": 12, "audio": 5, "vision": 7}
LENS = {"text": 10, "audio": 14, "vision": 9}
TINY = dict(d=16, n_tokens=4, heads=2, dim_head=8, ff=16, disc_hidden=8)


def tiny_model(**kw) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("lnln", DIMS, **{**TINY, **kw})


def clean_batch(b: int = 5, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    x, mask = {}, {}
    for m, d in DIMS.items():
        L = LENS[m]
        lens = torch.randint(2, L + 1, (b,), generator=g)
        lens[0] = L
        mask[m] = torch.arange(L)[None] < lens[:, None]
        x[m] = torch.randn(b, L, d, generator=g) * mask[m][..., None]
    present = {m: torch.ones(b, dtype=torch.bool) for m in DIMS}
    return Batch(x, mask, present, torch.randn(b, generator=g), [f"s{i}" for i in range(b)])


def corrupt(batch: Batch, drops: dict[str, list[tuple[int, int]]]) -> Batch:
    """Hide (row, step) pairs per modality, zero their content, keep the clean batch."""
    mask = {m: v.clone() for m, v in batch.mask.items()}
    for m, pairs in drops.items():
        for i, t in pairs:
            mask[m][i, t] = False
    x = {m: batch.x[m] * mask[m][..., None] for m in batch.x}
    rate = {m: 1 - (mask[m].sum(1) / batch.mask[m].sum(1).clamp_min(1)).float() for m in mask}
    return batch.replace(x=x, mask=mask, corruption=Corruption(clean=batch, missing_rate=rate))


def test_shapes_tiny_config():
    model, b = tiny_model(), clean_batch()
    out = model(b)
    assert out.pred.shape == (5,)
    assert out.extras["w"].shape == (5,)
    assert ((out.extras["w"] > 0) & (out.extras["w"] < 1)).all()
    assert out.extras["h_d"].shape == (5, 4, 16)
    assert {m: t.shape for m, t in out.extras["tokens"].items()} == {m: (5, 4, 16) for m in DIMS}


def test_the_tokens_of_a_sample_differ():
    """The n input-construction tokens and the n proxy tokens of one sample are n different
    vectors (zero-initialised learnable tokens without positions stayed n copies of one)."""
    model, b = tiny_model(), clean_batch()
    with torch.no_grad():
        out = model(b)
    for m, t in {**out.extras["tokens"], "proxy": out.extras["h_d"]}.items():
        spread = (t - t.mean(1, keepdim=True)).abs().amax(-1)  # (B, n): distance from the mean
        assert (spread > 1e-3).all(), m


def test_completeness_target_is_one_minus_realised_language_missing_rate():
    model = tiny_model(w_adversarial=0.0, w_reconstruction=0.0, w_pred=0.0, w_completeness=1.0)
    b = clean_batch()
    n_valid = b.mask["text"][1].sum().item()
    # row 1 loses 2 of its valid text steps, row 0 loses 3 of 10; rows 2-4 lose nothing
    cb = corrupt(b, {"text": [(1, 0), (1, 1), (0, 2), (0, 5), (0, 9)], "audio": [(2, 0)]})
    out = model(cb)
    target = torch.ones(5)
    target[0] = 1 - 3 / 10
    target[1] = 1 - 2 / n_valid
    losses = model.loss(out, cb)
    expected = torch.mean((out.extras["w"] - target) ** 2)
    assert losses["completeness"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert losses["total"].item() == pytest.approx(expected.item(), rel=1e-6)
    # no clean batch (clean training / evaluation): the target is 1 (r_l = 0)
    out = model(b)
    expected = torch.mean((out.extras["w"] - 1.0) ** 2)
    assert model.loss(out, b)["completeness"].item() == pytest.approx(expected.item(), rel=1e-6)


def test_grad_reverse_function():
    x = torch.randn(3, 4, requires_grad=True)
    y = grad_reverse(x, 0.5)
    assert torch.equal(y, x)
    (y * torch.arange(4.0)).sum().backward()
    assert torch.allclose(x.grad, -0.5 * torch.arange(4.0).expand(3, 4))


def test_gradient_reversal_flips_gradient_reaching_proxy_generator():
    b = corrupt(clean_batch(), {"text": [(0, 1), (2, 0)], "vision": [(1, 3)]})

    def grads(alpha):
        model = tiny_model(grl_alpha=alpha)
        loss = model.loss(model(b), b)["total"]
        loss.backward()
        return {
            part: {n: p.grad.clone() for n, p in getattr(model, part).named_parameters()}
            for part in ("proxy", "embed", "completeness")
        }

    rev = grads(1.0)
    ident = grads(-1.0)  # alpha -1: the layer passes gradients through unchanged
    cut = grads(0.0)  # alpha 0: nothing flows back through the reversal
    proxy = rev["proxy"]
    assert any(g.abs().sum() > 0 for g in proxy.values())
    # the proxy generator feeds the reversal directly: its whole gradient flips sign
    for n in proxy:
        assert torch.allclose(proxy[n], -ident["proxy"][n], atol=1e-6), n
        assert not cut["proxy"][n].any(), n
    # blocks that do not feed the proxy generator (the language encoder, the completeness
    # estimator) see the same gradient whatever alpha is
    for part, prefix in (("embed", "text."), ("completeness", "")):
        for n, g in rev[part].items():
            if n.startswith(prefix):
                assert torch.allclose(g, ident[part][n], atol=1e-6), (part, n)
                assert torch.allclose(g, cut[part][n], atol=1e-6), (part, n)
    # the audio / vision encoders feed both the proxy generator (reversed) and the fusion (not):
    # grad(alpha) = g_other - alpha * g_proxy, so grad(1) + grad(-1) = 2 grad(0), and the proxy
    # part is non-zero
    for n, g in rev["embed"].items():
        if n.startswith(("audio.", "vision.")):
            torch.testing.assert_close(g + ident["embed"][n], 2 * cut["embed"][n], atol=1e-6, rtol=1e-4)
    assert any(
        not torch.allclose(g, cut["embed"][n], atol=1e-6)
        for n, g in rev["embed"].items() if n.startswith(("audio.", "vision."))
    )


def test_reconstruction_target_comes_from_the_clean_batch():
    model = tiny_model().eval()
    b = clean_batch()
    cb = corrupt(b, {"audio": [(1, 0), (1, 3)], "vision": [(3, 2)]})
    out = model(cb)
    target = model.clean_tokens(out, cb)
    expected = model.tokens(b.x, {m: b.observed(m) for m in DIMS})
    for m in DIMS:
        assert torch.allclose(target[m], expected[m], atol=1e-5), m
    # the corrupted rows' input tokens differ from their targets; untouched rows coincide
    assert not torch.allclose(out.extras["tokens"]["audio"][1], target["audio"][1], atol=1e-4)
    assert torch.allclose(out.extras["tokens"]["audio"][0], target["audio"][0], atol=1e-6)
    # changing clean content changes the reconstruction loss, never the prediction
    cb2 = cb.replace(corruption=replace(
        cb.corruption, clean=cb.clean.replace(x={**b.x, "audio": b.x["audio"] * 3})))
    out2 = model(cb2)
    assert torch.equal(out2.pred, out.pred)
    l1, l2 = model.loss(out, cb), model.loss(out2, cb2)
    assert l2["reconstruction"].item() != pytest.approx(l1["reconstruction"].item(), rel=1e-4)
    # without a clean batch the target is the input's own tokens
    out = model(b)
    assert all(torch.equal(model.clean_tokens(out, b)[m], out.extras["tokens"][m]) for m in DIMS)


def test_four_loss_terms_named_and_weighted():
    model = tiny_model()
    cb = corrupt(clean_batch(), {"text": [(0, 0)], "audio": [(3, 1)]})
    losses = model.loss(model(cb), cb)
    assert set(losses) == {"total", "pred", "completeness", "adversarial", "reconstruction"}
    assert all(torch.isfinite(v) and v.ndim == 0 for v in losses.values())
    total = (
        0.9 * losses["completeness"] + 0.8 * losses["adversarial"]
        + 0.1 * losses["reconstruction"] + 1.0 * losses["pred"]
    )
    assert losses["total"].item() == pytest.approx(total.item(), rel=1e-6)
    # prediction term is MSE as in the reference
    out = model(cb)
    assert model.loss(out, cb)["pred"].item() == pytest.approx(
        torch.mean((out.pred - cb.y) ** 2).item(), rel=1e-6
    )


def test_masked_content_and_missing_modalities():
    model = tiny_model().eval()
    b = clean_batch()
    mask = {m: v.clone() for m, v in b.mask.items()}
    mask["vision"][:, 4:] = False
    present = {**b.present, "audio": torch.tensor([True, False, True, False, True])}
    b = b.replace(mask=mask, present=present)
    junk = {m: v.clone() for m, v in b.x.items()}
    junk["vision"][:, 4:] = float("nan")
    junk["audio"][[1, 3]] = float("-inf")
    with torch.no_grad():
        p1, p2 = model(b).pred, model(b.replace(x=junk)).pred
    assert torch.isfinite(p2).all()
    assert torch.allclose(p1, p2, atol=1e-6)
    # every modality missing for a sample: still finite
    none = {m: torch.zeros(5, dtype=torch.bool) for m in DIMS}
    with torch.no_grad():
        assert torch.isfinite(model(b.replace(present=none)).pred).all()


def tiny_dataset() -> MSADataset:
    rng = np.random.default_rng(0)

    def split(n, name):
        x, lens = {}, {}
        for m, d in DIMS.items():
            lens[m] = rng.integers(2, LENS[m] + 1, n)
            a = rng.normal(size=(n, LENS[m], d)).astype("f4")
            a[np.arange(LENS[m])[None] >= lens[m][:, None]] = 0
            x[m] = a
        sig = np.array([x["text"][i, : lens["text"][i], 0].mean() for i in range(n)])
        y = np.clip(3 * np.tanh(2 * sig), -3, 3)
        return SplitData(x, lens, y, [f"{name}{i}" for i in range(n)])

    return MSADataset(
        "lnln-tiny", {"train": split(48, "tr"), "valid": split(16, "va"), "test": split(16, "te")}
    )


def test_short_training_run_through_the_engine(tmp_path):
    summ = msakit.train(
        "lnln", tiny_dataset(), tmp_path, seeds=[0], epochs=2,
        overrides={**TINY, "batch_size": 16, "lr": 1e-3},
    )
    assert np.isfinite(summ["test"]["mae"]["mean"])
    cfg = json.loads((tmp_path / "seed_0" / "config.json").read_text())
    assert cfg["model_config"]["default_corrupt"] == "frames:random"
    rows = list(csv.DictReader(open(tmp_path / "seed_0" / "logs" / "metrics.csv")))
    logged = {k for r in rows for k, v in r.items() if v}
    assert {f"train/{k}" for k in ("completeness", "adversarial", "reconstruction", "pred")} <= logged
    # the engine applies the paper's training corruption by default
    lit = LitMSA(create_model("lnln", DIMS, **TINY), TrainConfig(), 0, tiny_dataset())
    assert lit.corrupt is not None and lit.corrupt.spec == "frames:random"


def test_packed_bucketed_input_construction_equals_plain_masked_attention():
    model = tiny_model(buckets=3).eval()
    b = corrupt(clean_batch(b=7, seed=3), {"vision": [(0, 1), (0, 5), (2, 0), (6, 3)]})
    enc = model.embed["vision"]
    x, keep = b.x["vision"], b.observed("vision")
    with torch.no_grad():
        packed = enc(x, keep)
        h = enc.pos(enc.proj(x.masked_fill(~keep[..., None], 0.0)))
        n = enc.tokens.shape[1]
        h = torch.cat([enc.tokens.expand(7, -1, -1), h], 1)
        kp = torch.cat([torch.ones(7, n, dtype=torch.bool), keep], 1)
        plain = enc.enc(h, keep=kp, n_out=n)
    assert torch.allclose(packed, plain, atol=1e-5)


def test_eval_prediction_does_not_depend_on_batch_mates():
    model = tiny_model().eval()
    b = corrupt(clean_batch(b=6, seed=4), {"text": [(2, 1)], "audio": [(4, 0), (4, 2)]})
    with torch.no_grad():
        full = model(b).pred
        for i in (0, 2, 4):
            one = b.replace(
                x={m: v[i : i + 1] for m, v in b.x.items()},
                mask={m: v[i : i + 1] for m, v in b.mask.items()},
                present={m: v[i : i + 1] for m, v in b.present.items()},
                y=b.y[i : i + 1], ids=b.ids[i : i + 1], corruption=None,
            )
            assert torch.allclose(model(one).pred, full[i : i + 1], atol=1e-5)
