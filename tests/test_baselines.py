"""MISA, Self-MM and ALMT (issue 13): model-specific checks. The model contract (masks, batch
independence, gradients, classification heads) and the sizes against MMSA run in
test_model_contract.py."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from test_model_contract import (
    ALL,
    DIMS,
    TINY,
    build,
    garbage_under_masks,
    make_batch,
    make_split,
    predict,
)

import msakit
from msakit.corrupt import parse_protocol
from msakit.data.dataset import MSADataset
from msakit.errors import ConfigError
from msakit.models import create_model
from msakit.models.misa import SequenceExtractor, cmd, diff_loss
from msakit.train.engine import EngineContext, load_run_model

PROTOCOLS = ["frames:0.5", "frames:random", "modality:0.5", "subset:l", "subset:av",
             "subset:random", "noise:0.5", "frames:0.3+modality:0.3"]


@pytest.mark.parametrize("name", ["misa", "self_mm", "almt"])
def test_runs_under_every_protocol(name):
    model = build(name)
    for i, spec in enumerate(PROTOCOLS):
        b = parse_protocol(spec)(make_batch(ALL), seed=i)
        model.train()
        out = model(b)
        terms = model.loss(out, b)
        assert all(torch.isfinite(v) for v in terms.values()), (spec, terms)
        terms["total"].backward()
        assert predict(model.eval(), b).isfinite().all(), spec


def short_run(name, tmp_path, corrupt, overrides):
    ds = msakit.load_dataset("synthetic-tiny")
    s = msakit.train(name, ds, tmp_path, seeds=[1], epochs=2, corrupt=corrupt,
                     overrides=overrides)
    assert np.isfinite(s["test"]["mae"]["mean"])
    rows = list(csv.DictReader(open(tmp_path / "seed_1" / "logs" / "metrics.csv")))
    return ds, rows


def logged(rows, term):
    return [float(r[f"train/{term}"]) for r in rows if r.get(f"train/{term}")]


# ------------------------------------------------------------------ MISA
def test_misa_loss_is_the_weighted_sum_of_named_terms():
    model = build("misa", w_diff=0.5, w_sim=2.0, w_recon=0.25).train()
    b = make_batch(ALL)
    t = model.loss(model(b), b)
    assert set(t) == {"total", "pred", "diff", "similarity", "reconstruction"}
    assert all(t[k] > 0 for k in ("diff", "similarity", "reconstruction"))
    torch.testing.assert_close(
        t["total"], t["pred"] + 0.5 * t["diff"] + 2.0 * t["similarity"] + 0.25 * t["reconstruction"]
    )
    torch.testing.assert_close(t["pred"], torch.nn.functional.mse_loss(model(b).pred, b.y))


def test_misa_auxiliary_losses_ignore_masked_and_absent_content():
    """The CMD, orthogonality and reconstruction terms use only samples where the compared
    modalities are present, and no step under a False mask."""
    model = build("misa").eval()
    b = make_batch(ALL)
    with torch.no_grad():
        t1, t2 = model.loss(model(b), b), model.loss(model(garbage_under_masks(b)), b)
    for k in t1:
        torch.testing.assert_close(t1[k], t2[k], atol=1e-5, rtol=1e-5)


def test_cmd_and_diff_loss_by_hand():
    a, b = torch.zeros(4, 3), torch.ones(4, 3)
    torch.testing.assert_close(cmd(a, b, 5), torch.tensor(3.0).sqrt())  # means only
    x = torch.randn(6, 3, requires_grad=True)
    c = cmd(x, x.detach().clone(), 5)  # identical batches: 0 with a finite (zero) gradient
    c.backward()
    assert c.item() == 0 and torch.isfinite(x.grad).all()
    # moments of order 2: variances 1 vs 4 (centred values +-1 vs +-2)
    p, q = torch.tensor([[1.0], [-1.0]]), torch.tensor([[2.0], [-2.0]])
    torch.testing.assert_close(cmd(p, q, 2), torch.tensor(3.0))
    # orthogonality: centred columns that never co-vary give 0, identical ones do not
    u = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    v = torch.tensor([[0.0, 1.0], [0.0, -1.0], [0.0, 0.0], [0.0, 0.0]])
    assert diff_loss(u[:, :1], u[:, 1:]).item() == pytest.approx(0.0, abs=1e-12)
    assert diff_loss(v, v).item() > 0.1


def test_misa_lstms_read_only_observed_steps_in_order():
    torch.manual_seed(0)
    net = SequenceExtractor(3, 4).eval()
    x = torch.randn(2, 7, 3)
    obs = torch.tensor([[1, 0, 1, 1, 0, 1, 0], [1, 1, 1, 1, 1, 1, 1]]).bool()
    with torch.no_grad():
        got = net(x, obs)
        for row, steps in ((0, [0, 2, 3, 5]), (1, list(range(7)))):
            o1, (h1, _) = net.rnn1(x[row : row + 1, steps])
            _, (h2, _) = net.rnn2(net.norm(o1))
            want = torch.cat([h1, h2], 2).transpose(0, 1).reshape(-1)
            torch.testing.assert_close(got[row], want, atol=1e-6, rtol=1e-5)


def test_misa_windows_keep_masks_and_batch_independence():
    """max_steps windows (the default 50 is longer than the contract batch): only observed
    steps are averaged, and a sample's prediction ignores its batch mates."""
    model = build("misa", max_steps=4).eval()
    b = make_batch(ALL)
    p = predict(model, b)
    torch.testing.assert_close(predict(model, garbage_under_masks(b)), p, atol=1e-5, rtol=1e-5)
    alone = torch.cat([predict(model, make_batch([i])) for i in ALL])
    torch.testing.assert_close(alone, p, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(predict(build("misa", max_steps=None).eval(), b), p)


def test_misa_trains_through_the_engine(tmp_path):
    _, rows = short_run("misa", tmp_path, "modality:0.3", {**TINY["misa"], "batch_size": 32})
    for term in ("pred", "diff", "similarity", "reconstruction"):
        vals = logged(rows, term)
        assert len(vals) == 2 and all(np.isfinite(vals)), term


# ------------------------------------------------------------------ Self-MM
def context_for(train, batch_size=4):
    ds = MSADataset("ulgm", {"train": train, "valid": make_split(4, 21), "test": make_split(4, 22)})
    return EngineContext(dataset=ds, batch_size=batch_size, seed=0)


def memory(model):
    return {k: v.clone() for k, v in model.state_dict().items() if k.startswith("ulgm_")}


def test_self_mm_memory_starts_from_the_training_labels():
    split = make_split(8, 0, {1: ["audio"], 3: ["text"]})
    model = build("self_mm")
    assert model.ulgm_labels.shape == (0, 4)  # empty until training starts
    model.on_train_epoch_start(0, context_for(split))
    y = torch.from_numpy(split.y)
    assert model.ulgm_labels.shape == (8, 4)
    for j in range(4):
        assert torch.equal(model.ulgm_labels[:, j], y)
    assert not model.ulgm_seen.any() and int(model.ulgm_epoch) == 1


def manual_update(model, feats, rows, has, n):
    """The paper's Eq. 5-9 on MOSI-like labels (pivot 0, clip [-3, 3]), written out."""
    lab = model.ulgm_labels.clone()

    def centre(j, k):
        f = getattr(model, f"ulgm_feat_{k}")
        seen = model.ulgm_seen[:, j]
        return f[seen & (lab[:, j] > 0)].mean(0), f[seen & (lab[:, j] < 0)].mean(0)

    def rel(f, c):
        d_p, d_n = (f - c[0]).norm(dim=-1), (f - c[1]).norm(dim=-1)
        return (d_n - d_p) / (d_p + 1e-8)

    d_m = rel(feats["fusion"], centre(0, "fusion"))
    y_m = lab[rows, 0]
    for j, m in enumerate(model.mods, 1):
        d_s = rel(feats[m], centre(j, m))
        new = (0.5 * d_s / (d_m + 1e-8) * y_m + 0.5 * (y_m + d_s - d_m)).clamp(-3, 3)
        upd = (n - 1) / (n + 1) * lab[rows, j] + 2 / (n + 1) * new
        lab[rows[has[m]], j] = upd[has[m]]
    return lab


def test_self_mm_ulgm_update_follows_the_paper_and_only_in_training():
    split = make_split(8, 0, {1: ["audio"], 2: ["audio", "vision"], 3: ["text"]})
    ctx = context_for(split)
    model = build("self_mm")
    model.on_train_epoch_start(0, ctx)
    b = make_batch(ALL, split)
    y = b.y
    # epoch 1: features stored, labels untouched, unimodal losses weighted by tanh(0) = 0
    model.train()
    out = model(b)
    t = model.loss(out, b)
    assert all(t[f"unimodal_{m}"] == 0 for m in model.mods)
    for j in range(4):
        assert torch.equal(model.ulgm_labels[:, j], y)
    for j, k in enumerate(model.keys):
        seen = torch.ones(8, dtype=torch.bool) if k == "fusion" else out.extras["has"][k]
        assert torch.equal(model.ulgm_seen[:, j], seen)
        torch.testing.assert_close(getattr(model, f"ulgm_feat_{k}")[seen],
                                   out.extras["features"][k][seen].detach())
    # evaluation mode writes nothing (forward and loss)
    before = memory(model)
    model.eval()
    model.loss(model(b), b)
    model.on_train_epoch_start(1, ctx)  # epoch 2: the memory is kept, n = 2
    assert int(model.ulgm_epoch) == 2
    for k, v in memory(model).items():
        if k != "ulgm_epoch":
            assert torch.equal(v, before[k]), k
    # epoch 2 in training mode: labels move exactly as the formula says, only where present
    model.train()
    rows = torch.tensor([0, 2, 4, 6])
    sub = make_batch(rows.tolist(), split)
    out = model(sub)
    feats = {k: v.detach() for k, v in out.extras["features"].items()}
    want = manual_update(model, feats, rows, out.extras["has"], n=2)
    model.loss(out, sub)
    torch.testing.assert_close(model.ulgm_labels, want)
    moved = (model.ulgm_labels[:, 1:] != y[:, None]).any(1)
    assert moved[rows].all() and not moved[[1, 3, 5, 7]].any()
    assert model.ulgm_labels[2, 2] == y[2] and model.ulgm_labels[2, 3] == y[2]  # absent a, v
    assert torch.equal(model.ulgm_labels[:, 0], y)  # y_m never changes
    # the next loss reads the moved labels: weights tanh|y_s - y_m| > 0
    t = model.loss(model(sub), sub)
    assert all(t[f"unimodal_{m}"] > 0 for m in model.mods)


def _self_mm_with_moved_labels():
    """A Self-MM model whose ULGM memory holds 8 training samples and has moved once (epoch 1),
    the batch of those samples and the engine context."""
    split = make_split(8, 0)
    model = build("self_mm")
    ctx = context_for(split)
    model.on_train_epoch_start(0, ctx)
    model.train()
    b = make_batch(ALL, split)
    model.loss(model(b), b)
    model.on_train_epoch_start(1, ctx)
    model.loss(model(b), b)  # labels move
    return model, b, ctx


def test_self_mm_other_splits_never_read_or_write_the_memory():
    model, b, ctx = _self_mm_with_moved_labels()
    before = memory(model)
    other = make_batch(ALL, make_split(8, 5))  # same row indices, other samples
    assert (model.memory_rows(other) == -1).all()
    assert (model.memory_rows(b) == torch.arange(8)).all()
    t = model.loss(model(other), other)
    assert all(t[f"unimodal_{m}"] == 0 for m in model.mods)  # y_s = y_m for them
    for k, v in memory(model).items():
        assert torch.equal(v, before[k]), k


def test_self_mm_memory_is_saved_and_restored():
    model, b, ctx = _self_mm_with_moved_labels()
    state = model.state_dict()
    fresh = create_model("self_mm", DIMS, **TINY["self_mm"])
    fresh.load_state_dict(state)  # resizes the empty memory to the saved one
    for k, v in memory(model).items():
        assert torch.equal(getattr(fresh, k), v), k
    # a resumed training keeps it (same split, epoch > 0)
    fresh.on_train_epoch_start(2, ctx)
    assert torch.equal(fresh.ulgm_labels, model.ulgm_labels)


def test_self_mm_trains_through_the_engine_and_saves_the_memory(tmp_path):
    small = {**TINY["self_mm"], "batch_size": 32, "accumulate": 1}
    ds, rows = short_run("self_mm", tmp_path, "frames:random", small)
    for term in ("pred", "unimodal_text", "unimodal_audio", "unimodal_vision"):
        vals = logged(rows, term)
        assert len(vals) == 2 and all(np.isfinite(vals)), term
    y = torch.from_numpy(ds.splits["train"].y)
    n = len(y)
    model, _ = load_run_model(tmp_path / "seed_1")
    assert model.ulgm_labels.shape == (n, 4) and torch.equal(model.ulgm_labels[:, 0], y)
    last = torch.load(tmp_path / "seed_1" / "ckpt" / "last.ckpt", weights_only=True)
    lab = last["state_dict"]["model.ulgm_labels"]
    assert lab.shape == (n, 4) and torch.equal(lab[:, 0], y)
    assert (lab[:, 1:] != y[:, None]).any(1).float().mean() > 0.5  # epoch 2 moved them
    assert (lab[:, 1:].abs() <= 3).all()


def test_self_mm_optimiser_groups_text_pool_and_classification():
    model = build("self_mm", audio_lr=0.02, vision_lr=0.03)
    groups = model.param_groups()
    assert [g.get("lr") for g in groups] == [0.02, 0.03, None]
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    # the first observed text step (with a dropped first step: the next one)
    model = build("self_mm", text_pool="first").eval()
    b = make_batch(ALL)
    obs = b.observed("text").clone()
    obs[0, 0] = False
    x = model._text(b.x["text"], obs)
    assert torch.equal(x[0], b.x["text"][0, 1]) and torch.equal(x[1], b.x["text"][1, 0])
    # classification: no memory, unimodal heads trained by cross-entropy where present
    model = build("self_mm", n_classes=3).train()
    model.on_train_epoch_start(0, context_for(make_split(8, 0)))
    assert model.ulgm_labels.shape[0] == 0
    b = make_batch(ALL).replace(y=torch.arange(8) % 3)
    out = model(b)
    t = model.loss(out, b)
    has = out.extras["has"]["audio"]
    ce = torch.nn.functional.cross_entropy(out.extras["unimodal"]["audio"], b.y, reduction="none")
    torch.testing.assert_close(t["unimodal_audio"], (ce * has).mean())


# ------------------------------------------------------------------ ALMT
def test_almt_tokens_differ_and_language_leads():
    """The learned tokens start distinct (zero tokens without positions would give every
    token the same output forever); text is the dominant modality, else the first one."""
    model = build("almt").eval()
    b = make_batch(ALL)
    with torch.no_grad():
        h = model(b).extras["tokens"]
    for m, t in h.items():
        assert (t - t[:, :1]).abs().amax(dim=(1, 2)).min() > 1e-3, m
    assert model.dominant == "text" and model.aux == ("audio", "vision")
    av = create_model("almt", {"audio": 4, "vision": 6}, **TINY["almt"]).eval()
    assert av.dominant == "audio" and av.aux == ("vision",)
    sub = b.replace(x={k: b.x[k] for k in ("audio", "vision")},
                    mask={k: b.mask[k] for k in ("audio", "vision")},
                    present={k: b.present[k] for k in ("audio", "vision")})
    assert predict(av, sub).isfinite().all()
    assert create_model("almt", DIMS, dominant="vision", **TINY["almt"]).aux == ("text", "audio")
    with pytest.raises(ConfigError, match="dominant"):
        create_model("almt", {"audio": 4, "vision": 6}, dominant="text", **TINY["almt"])
    with pytest.raises(ConfigError, match="besides"):
        create_model("almt", {"text": 8}, **TINY["almt"])
    with pytest.raises(ConfigError, match="divisible"):
        create_model("almt", DIMS, d=30, heads=4)


def test_almt_trains_through_the_engine(tmp_path):
    _, rows = short_run("almt", tmp_path, "frames:random", {**TINY["almt"], "batch_size": 32})
    vals = logged(rows, "pred")
    assert len(vals) == 2 and all(np.isfinite(vals))
