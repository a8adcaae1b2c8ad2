"""HME: k-NN retrieval, the memory bank (filled, refreshed, saved, restored), batch
independence, masks, uncertainty, the named loss and a short run through the engine."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import msakit
from msakit.data.batch import SplitData, collate
from msakit.data.dataset import MSADataset
from msakit.models import create_model
from msakit.models.hme import HMEConfig
from msakit.models.layers import window_mean
from msakit.models.layers.retrieval import ExactRetriever, make_retriever
from msakit.train.engine import EngineContext, load_run_model, predict

SMALL = dict(d=16, heads=2, enc_layers=1, latent_depth=1, hyper_depth=1, num_latents=3, k=4)
SHAPES = {"text": (9, 8), "audio": (14, 3), "vision": (11, 5)}
DIMS = {m: D for m, (_, D) in SHAPES.items()}


def make_split(n: int, seed: int, absent: dict[int, list[str]] | None = None) -> SplitData:
    rng = np.random.default_rng(seed)
    x, lens, present = {}, {}, {}
    for m, (L, D) in SHAPES.items():
        lens[m] = rng.integers(2, L + 1, n)
        a = rng.normal(size=(n, L, D)).astype("f4")
        a[np.arange(L)[None, :] >= lens[m][:, None]] = 0
        x[m] = a
        present[m] = np.ones(n, bool)
    for row, mods in (absent or {}).items():
        for m in mods:
            present[m][row] = False
    y = np.clip(2 * np.tanh(x["text"][:, 0, 0]) + 0.3 * x["audio"][:, 0, 0], -3, 3)
    return SplitData(x, lens, y, [f"s{seed}_{i}" for i in range(n)], present=present)


@pytest.fixture(scope="module")
def dataset() -> MSADataset:
    return MSADataset(
        "hme-toy",
        {
            "train": make_split(40, 0, {3: ["audio"], 7: ["text", "vision"]}),
            "valid": make_split(12, 1),
            "test": make_split(12, 2, {0: ["vision"], 5: ["audio"]}),
        },
    )


def build(**kw) -> torch.nn.Module:
    torch.manual_seed(0)
    if kw.get("sim_threshold", 0) < 0:
        # a negative cosine threshold (-1: keep every neighbour) is meaningful, but the generic
        # range check in models.base refuses negative numbers: build the config directly
        return create_model("hme", DIMS, config=HMEConfig(**{**SMALL, **kw}))
    return create_model("hme", DIMS, **{**SMALL, **kw})


def ready(dataset, **kw):
    model = build(**kw)
    model.on_fit_end(EngineContext(dataset, 16, 0))
    return model.eval()


def preds(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(batch).pred


# ------------------------------------------------------------------ retrieval
def brute_force(keys, ids, q, k, exclude=None):
    kn = keys / np.linalg.norm(keys, axis=1, keepdims=True)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    sim = qn @ kn.T
    out = []
    for i in range(len(q)):
        order = [j for j in np.argsort(-sim[i], kind="stable") if exclude is None or ids[j] != exclude[i]]
        out.append((sim[i, order[:k]], order[:k]))
    return out


def test_exact_retriever_matches_brute_force():
    rng = np.random.default_rng(0)
    keys = rng.normal(size=(50, 8)).astype("f4")
    ids = rng.permutation(1000)[:50]
    q = np.concatenate([rng.normal(size=(5, 8)), keys[[4, 9]] * 3.0]).astype("f4")  # 2 copies
    r = ExactRetriever()
    r.add(torch.from_numpy(keys[:20]), torch.from_numpy(ids[:20]))  # two adds append
    r.add(torch.from_numpy(keys[20:]), torch.from_numpy(ids[20:]))
    assert len(r) == 50
    scores, pos = r.search(torch.from_numpy(q), 6)
    for i, (s, p) in enumerate(brute_force(keys, ids, q, 6)):
        np.testing.assert_allclose(scores[i].numpy(), s, atol=1e-5)
        assert pos[i].tolist() == list(p)
    assert pos[5, 0] == 4 and pos[6, 0] == 9  # the copies find their original (cosine 1)
    excl = torch.from_numpy(np.r_[np.full(5, -1), ids[[4, 9]]])
    scores, pos = r.search(torch.from_numpy(q), 6, exclude_ids=excl)
    for i, (s, p) in enumerate(brute_force(keys, ids, q, 6, excl.numpy())):
        np.testing.assert_allclose(scores[i].numpy(), s, atol=1e-5)
        assert pos[i].tolist() == list(p)
    assert 4 not in pos[5].tolist() and 9 not in pos[6].tolist()


def test_retriever_pads_when_fewer_entries_and_checks_input():
    r = make_retriever("exact")
    s, p = r.search(torch.randn(2, 3), 4)  # empty index
    assert (p == -1).all() and torch.isinf(s).all()
    r.add(torch.randn(3, 3), torch.tensor([7, 8, 9]))
    s, p = r.search(torch.randn(2, 3), 5, exclude_ids=torch.tensor([8, -1]))
    assert p.shape == (2, 5)
    assert sorted(p[0, :2].tolist()) == [0, 2] and (p[0, 2:] == -1).all()
    assert sorted(p[1, :3].tolist()) == [0, 1, 2] and (p[1, 3:] == -1).all()
    assert torch.isinf(s[0, 2:]).all() and torch.isfinite(s[1, :3]).all()
    with pytest.raises(ValueError, match="queries must be"):
        r.search(torch.randn(3), 2)
    with pytest.raises(ValueError, match="k must be"):
        r.search(torch.randn(2, 3), 0)
    with pytest.raises(ValueError, match="ids must be"):
        r.add(torch.randn(2, 3), torch.tensor([1]))
    with pytest.raises(KeyError, match="exact"):
        make_retriever("faiss-not-installed")


def test_window_mean_per_sample_windows_ignore_masked_content():
    x = torch.arange(10.0).view(1, 10, 1).repeat(2, 1, 1)
    obs = torch.ones(2, 10, dtype=torch.bool)
    obs[0, 1] = False  # a gap: window 0 of sample 0 is the mean of steps 0 and 2
    obs[1, 6:] = False  # sample 1 has 6 steps: windows of 2
    x = x.masked_fill(~obs.unsqueeze(-1), 0.0)
    y, o = window_mean(x, obs, 4)  # sample 0: n=10 -> windows of 3
    assert y.shape == (2, 4, 1)
    torch.testing.assert_close(y[0, :, 0], torch.tensor([1.0, 4.0, 7.0, 9.0]))
    torch.testing.assert_close(y[1, :3, 0], torch.tensor([0.5, 2.5, 4.5]))
    assert o.tolist() == [[True] * 4, [True, True, True, False]]
    same, o2 = window_mean(x, obs, 10)  # short enough: unchanged
    assert same is x and o2 is obs


# ------------------------------------------------------------------ memory bank
def test_on_fit_end_fills_bank_and_state_dict_restores_it(dataset, tmp_path):
    model = ready(dataset)
    n = len(dataset.splits["train"])
    assert model.bank_len() == n == model.bank_x.shape[0]
    assert model.bank_ids.tolist() == list(range(n))
    # presence is tracked per entry: row 3 has no audio, row 7 only audio
    pres = model.bank_present
    assert not pres[3, 1] and pres[3, 0] and pres[7].tolist() == [False, True, False]
    assert int(pres.sum()) == 3 * n - 3
    # the bank is what the encoder gives on the clean training split
    with torch.no_grad():
        reps, has = model.encode(collate(dataset.splits["train"], np.arange(n)))
    torch.testing.assert_close(model.bank_x, reps, atol=1e-5, rtol=1e-5)

    torch.save(model.state_dict(), tmp_path / "model.pt")
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    assert state["bank_x"].shape[0] == n
    fresh = build()  # a new model: empty bank of the default size
    assert fresh.bank_len() == 0 and fresh.bank_x.shape[0] != n
    fresh.load_state_dict(state)
    fresh.eval()
    assert fresh.bank_len() == n
    b = collate(dataset.splits["test"], np.arange(12))
    torch.testing.assert_close(preds(fresh, b), preds(model, b))
    # the bank matters: with an empty bank the predictions change
    empty = build().eval()
    empty.load_state_dict({k: v for k, v in state.items() if not k.startswith("bank_")}, strict=False)
    assert not torch.allclose(preds(empty, b), preds(model, b))


def test_training_refreshes_bank_fifo_by_id_and_skips_absent(dataset):
    model = build(bank_size=10).train()
    sp = dataset.splits["train"]
    b = collate(sp, np.arange(8))
    b.present["vision"][2] = False
    b.mask["vision"][2] = False
    model(b)
    assert model.bank_len() == 8 and int(model.bank_ptr) == 8
    assert not model.bank_present[2, 2] and model.bank_present[2, :2].all()
    model(b)  # the same samples again replace their own entries
    assert model.bank_len() == 8 and int(model.bank_ptr) == 8
    model(collate(sp, np.arange(8, 14)))  # 6 new ids into 10 slots: the oldest 4 go
    assert model.bank_len() == 10
    assert sorted(model.bank_ids.tolist()) == [4, 5, 6, 7, 8, 9, 10, 11, 12, 13]
    # a sample with no observed modality is not written
    b2 = collate(sp, np.arange(20, 22))
    for m in b2.present:
        b2.present[m][0] = False
        b2.mask[m][0] = False
    model(b2)
    assert 20 not in model.bank_ids.tolist() and 21 in model.bank_ids.tolist()
    # evaluation never writes
    before = model.bank_x.clone()
    model.eval()
    preds(model, collate(sp, np.arange(30, 40)))
    assert torch.equal(model.bank_x, before) and 30 not in model.bank_ids.tolist()


def test_training_retrieval_excludes_the_sample_itself(dataset):
    model = build(sim_threshold=-1.0).eval()
    sp = dataset.splits["train"]
    b = collate(sp, np.arange(6))
    with torch.no_grad():
        reps, has = model.encode(b)
    model.set_bank(reps[:1], has[:1], torch.tensor([0]))  # the bank holds only sample 0
    _, ok = model.retrieve(reps, has, None)
    assert not has[3, 1]  # row 3 has no audio: it does not search
    assert torch.equal(ok[:, :, 0], has)  # evaluation: every observed modality finds the entry
    _, ok = model.retrieve(reps, has, b.index)
    assert not ok[0].any() and torch.equal(ok[1:, :, 0], has[1:])  # training: never itself
    # only entries that observed the modality are searched
    has0 = has[:1].clone()
    has0[0, 1] = False
    model.set_bank(reps[:1], has0, torch.tensor([0]))
    _, ok = model.retrieve(reps, has, None)
    assert not ok[:, 1].any() and torch.equal(ok[:, 0, 0], has[:, 0])


def test_threshold_filters_neighbours(dataset):
    model = ready(dataset, sim_threshold=1.01)
    b = collate(dataset.splits["test"], np.arange(12))
    with torch.no_grad():
        out = model(b)
    assert (out.extras["neighbours"] == 0).all()
    model = ready(dataset, sim_threshold=-1.0)
    with torch.no_grad():
        out = model(b)
    want = b.present["text"].long() * 4
    assert torch.equal(out.extras["neighbours"][:, 0], want)


def test_retrieval_none_is_the_model_without_neighbours(dataset):
    """``retrieval=none`` (the ablation) keeps no bank and computes exactly what the same
    weights compute when no neighbour passes the threshold."""
    off = ready(dataset, retrieval="none")
    assert off.bank_x.shape[0] == 0 and off.bank_len() == 0
    on = ready(dataset, sim_threshold=1.01)  # same seed: same weights; a bank, never used
    assert on.bank_len() == len(dataset.splits["train"])
    b = collate(dataset.splits["test"], np.arange(12))
    torch.testing.assert_close(preds(off, b), preds(on, b))
    assert not torch.equal(preds(off, b), preds(ready(dataset, sim_threshold=-1.0), b))
    off.train()
    off(collate(dataset.splits["train"], np.arange(8)))  # training writes nothing either
    assert off.bank_len() == 0


def test_enhance_neighbours_reads_only_the_neighbours(dataset):
    """The paper's enhanced branch: the latents of modality m read m's retrieved neighbours
    only; a sample with no neighbour above the threshold reads its own pooled vector."""
    seen = {}
    for thr in (-1.0, 1.01):
        model = ready(dataset, enhance="neighbours", sim_threshold=thr)
        model.latent_mod["text"].register_forward_hook(
            lambda mod, args, out, thr=thr: seen.__setitem__(thr, args))
        b = collate(dataset.splits["test"], np.arange(12))
        preds(model, b)
    ctx, keep = seen[-1.0]
    assert ctx.shape[1] == 1 + SMALL["k"]  # own pooled vector slot + k neighbours, no steps
    has = b.present["text"]
    assert not keep[has, 0].any() and keep[has, 1:].all()  # neighbours only
    _, keep = seen[1.01]
    assert keep[:, 0].all() and not keep[:, 1:].any()  # none passes: its own pooled vector
    with pytest.raises(ValueError, match="enhance"):
        build(enhance="mean")


# ------------------------------------------------------------------ evaluation behaviour
def test_eval_prediction_independent_of_batch_mates(dataset):
    model = ready(dataset)
    sp = dataset.splits["test"]
    full = preds(model, collate(sp, np.arange(12)))
    alone = torch.cat([preds(model, collate(sp, [i])) for i in range(12)])
    mixed = preds(model, collate(sp, [7, 3, 11]))
    torch.testing.assert_close(alone, full, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(mixed, full[[7, 3, 11]], atol=1e-5, rtol=1e-4)


def test_masked_and_absent_content_is_ignored_including_long_sequences(dataset):
    model = ready(dataset, max_steps=4)  # every modality goes through window_mean
    b = collate(dataset.splits["test"], np.arange(12))
    b.mask["audio"][1, 0] = False
    g = torch.Generator().manual_seed(0)
    x = {m: torch.where(b.observed(m).unsqueeze(-1), t, 50 * torch.randn(t.shape, generator=g))
         for m, t in b.x.items()}
    torch.testing.assert_close(preds(model, b), preds(model, b.replace(x=x)), atol=1e-5, rtol=1e-5)


def test_uncertainty_kl_and_named_loss(dataset):
    model = ready(dataset)
    b = collate(dataset.splits["test"], np.arange(12))
    model.train()
    out = model(b)
    u = out.extras["uncertainty"]
    assert u.shape == (12,) and (u > 0).all() and torch.isfinite(u).all()
    assert out.extras["sigma"].shape == (12, 3) and out.extras["pred_m"].shape == (12, 3)
    kl = out.extras["kl"]
    assert kl.dim() == 0 and torch.isfinite(kl) and kl > 0
    losses = model.loss(out, b)
    assert set(losses) == {"total", "pred", "unimodal", "kl"}
    assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
    want = losses["pred"] + 0.8 * losses["unimodal"] + 0.01 * losses["kl"]
    torch.testing.assert_close(losses["total"], want)
    # the VIB samples z in training (sigma itself is deterministic, so compare predictions):
    # with dropout 0 and no bank writes (no grad), two training passes differ only by that
    # noise; evaluation uses mu and is deterministic
    model = ready(dataset, dropout=0.0).train()
    with torch.no_grad():
        assert not torch.allclose(model(b).pred, model(b).pred)
        model.eval()
        torch.testing.assert_close(model(b).pred, model(b).pred, atol=0, rtol=0)


def test_classification_heads_and_unimodal_cross_entropy(dataset):
    import torch.nn.functional as F

    model = build(n_classes=3).eval()
    b = collate(dataset.splits["test"], np.arange(12))
    b = b.replace(y=torch.arange(12) % 3)
    with torch.no_grad():
        out = model(b)
        pm = out.extras["pred_m"]
        assert out.pred.shape == (12, 3) and pm.shape == (12, 3, 3)
        losses = model.loss(out, b)
    torch.testing.assert_close(losses["pred"], F.cross_entropy(out.pred, b.y))
    uni = torch.stack([F.cross_entropy(pm[:, i], b.y) for i in range(3)]).mean()
    torch.testing.assert_close(losses["unimodal"], uni)


def test_absent_modalities_no_nan_and_gradients_everywhere(dataset):
    model = build().train()
    b = collate(dataset.splits["test"], np.arange(12))
    for m in ("audio", "vision"):  # audio absent for everyone, vision for half
        rows = slice(None) if m == "audio" else slice(0, 6)
        b.present[m][rows] = False
        b.mask[m][rows] = False
    out = model(b)
    assert torch.isfinite(out.pred).all()
    model.loss(out, b)["total"].backward()
    for n, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n


def test_defaults_follow_the_reference():
    m = create_model("hme", {"text": 768, "audio": 5, "vision": 20})
    c = m.config
    assert c.default_corrupt == "modality:0.3" and c.grad_clip == 0.8
    assert (c.weight_decay, c.sim_threshold, c.num_latents) == (5e-4, 0.6, 5)
    assert (c.w_unimodal, c.w_kl, c.loss) == (0.8, 0.01, "l1")
    with pytest.raises(ValueError, match="two modalities"):
        create_model("hme", {"text": 8})
    with pytest.raises(ValueError, match="pool"):
        create_model("hme", DIMS, pool="last")


# ------------------------------------------------------------------ through the engine
def test_short_training_run_saves_the_bank(tmp_path):
    from msakit.data.registry import load_dataset

    ds = load_dataset("synthetic-tiny")
    s = msakit.train("hme", ds, tmp_path, seeds=[1], epochs=2, overrides=SMALL)
    run = tmp_path / "seed_1"
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["model_config"]["default_corrupt"] == "modality:0.3"
    log = (run / "logs" / "metrics.csv").read_text().splitlines()[0]
    for term in ("train/total", "train/pred", "train/unimodal", "train/kl"):
        assert term in log
    model, _ = load_run_model(run)
    assert model.bank_len() == len(ds.splits["train"])
    r = predict(model, ds.splits["test"])
    assert np.mean(np.abs(r["pred"] - r["y"])) == pytest.approx(s["test"]["mae"]["mean"], abs=1e-5)


def test_bank_holds_normalised_encodings_when_inputs_are_z_scored(dataset):
    """on_fit_end calls encode() directly (no forward pre-hook): it must normalise itself,
    or the bank would hold raw-scale encodings that evaluation batches never produce."""
    model = build()
    model.fit_normalizer(dataset.splits["train"])
    with torch.no_grad():
        model.norm_mean_audio.add_(5.0)  # make normalisation matter
    model.on_fit_end(EngineContext(dataset, 16, 0))
    model.eval()
    n = len(dataset.splits["train"])
    b = collate(dataset.splits["train"], np.arange(n))
    with torch.no_grad():
        want, _ = model.encode(model.prepare_batch(b))
        raw, _ = model.encode(b)
    torch.testing.assert_close(model.bank_x, want, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(model.bank_x, raw, atol=1e-3)


def _write_bank_on_rank(rank: int, world: int, init: str, out: str) -> None:
    """One rank of test_ddp_bank_writes_each_training_sample_once (spawned, gloo)."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    torch.set_num_threads(1)
    model = build(bank_size=8)
    g = torch.Generator().manual_seed(0)
    reps, has = torch.randn(6, 3, SMALL["d"], generator=g), torch.ones(6, 3, dtype=torch.bool)
    ids = torch.tensor([10, 11, 12, 13, 14, 15])
    # the engine's shares: global batch rows 0-4 split 3/2, then a one-row batch that rank 1
    # receives as a padding row (the same id, other values: its dropout draws differ)
    first = slice(0, 3) if rank == 0 else slice(3, 5)
    model._write_bank(reps[first], has[first], ids[first])
    last = reps[5:] if rank == 0 else reps[5:] + 1.0
    model._write_bank(last, has[5:], ids[5:])
    torch.save({k: getattr(model, k) for k in ("bank_x", "bank_present", "bank_ids", "bank_ptr")},
               f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def test_ddp_bank_writes_each_training_sample_once(tmp_path):
    """Data parallel HME: the bank after two global batches, one of them a single row (so
    rank 1 holds a weight-0 padding row), equals the single-process bank on every rank; the
    padding copy is neither stored twice nor allowed to overwrite the real row."""
    import torch.multiprocessing as mp

    mp.spawn(_write_bank_on_rank, args=(2, f"file://{tmp_path}/pg", str(tmp_path)), nprocs=2)
    model = build(bank_size=8)
    g = torch.Generator().manual_seed(0)
    reps, has = torch.randn(6, 3, SMALL["d"], generator=g), torch.ones(6, 3, dtype=torch.bool)
    ids = torch.tensor([10, 11, 12, 13, 14, 15])
    model._write_bank(reps[:5], has[:5], ids[:5])
    model._write_bank(reps[5:], has[5:], ids[5:])
    assert sorted(model.bank_ids.tolist()) == [-1, -1, 10, 11, 12, 13, 14, 15]
    for rank in (0, 1):
        bank = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        for k, v in bank.items():
            assert torch.equal(v, getattr(model, k)), (rank, k)
