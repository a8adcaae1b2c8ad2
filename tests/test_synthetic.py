"""The synthetic benchmark: determinism, shapes, the law, and the Bayes-optimal oracle."""

from __future__ import annotations

import dataclasses
import json
import math
import time

import numpy as np
import pytest
import torch

import msakit
from msakit.data.batch import collate
from msakit.data.registry import DATASETS, load_dataset
from msakit.data.sources.synthetic import (
    PRESETS,
    ModalityLaw,
    SyntheticOracle,
    SyntheticParams,
    make_synthetic,
    posterior_median,
)
from msakit.metrics import regression_metrics


def full_batch(split):
    return collate(split, np.arange(len(split)))


def mae(p, y):
    return float(np.mean(np.abs(np.asarray(p, dtype=np.float64) - np.asarray(y))))


@pytest.fixture(scope="module")
def tiny():
    return make_synthetic("synthetic-tiny", seed=3)


@pytest.fixture(scope="module")
def tiny_big_test():
    # many test samples so that MAE comparisons between information sets are not noise
    return make_synthetic("synthetic-tiny", seed=5, n=(40, 20, 3000))


# ---------------------------------------------------------------- generation


def test_same_seed_identical_different_seed_differs():
    a, b = make_synthetic("synthetic-tiny", 11), make_synthetic("synthetic-tiny", 11)
    c = make_synthetic("synthetic-tiny", 12)
    for s in ("train", "valid", "test"):
        for m in ("text", "audio", "vision"):
            assert np.array_equal(a.splits[s].x[m], b.splits[s].x[m])
            assert np.array_equal(a.splits[s].lengths[m], b.splits[s].lengths[m])
        assert np.array_equal(a.splits[s].y, b.splits[s].y)
        assert a.splits[s].ids == b.splits[s].ids
        assert not np.array_equal(a.splits[s].x["text"], c.splits[s].x["text"])
        assert not np.array_equal(a.splits[s].y, c.splits[s].y)
    # splits are independent streams: the train split does not change with the test size
    d = make_synthetic("synthetic-tiny", 11, n=(240, 60, 7))
    assert np.array_equal(a.splits["train"].x["audio"], d.splits["train"].x["audio"])
    assert len(d.splits["test"]) == 7


def test_tiny_shapes_lengths_padding(tiny):
    p = PRESETS["synthetic-tiny"]
    assert tiny.sizes() == dict(zip(("train", "valid", "test"), p.n, strict=True))
    assert 100 <= sum(p.n) <= 1000
    for sd in tiny.splits.values():
        for m, law in p.modalities.items():
            assert sd.x[m].shape == (len(sd), law.max_len, law.dim)
            L = sd.lengths[m]
            assert L.min() >= law.min_len and L.max() <= law.max_len
            assert len(np.unique(L)) > 3  # variable true lengths
            pad = np.arange(law.max_len)[None, :] >= L[:, None]
            assert not sd.x[m][pad].any()  # zero beyond the true length
            assert (np.abs(sd.x[m][~pad]).sum(-1) > 0).all()
            assert sd.present[m].all()
    assert tiny.oracle is not None and tiny.label_scale == "mosi"


def test_labels_mosi_like(tiny_big_test):
    y = tiny_big_test.splits["test"].y
    assert y.min() >= -3 and y.max() <= 3
    assert np.allclose(y * 5, np.round(y * 5), atol=1e-5)  # on the 0.2 grid, like MOSI
    assert abs(y.mean()) < 0.15 and 1.3 < y.std() < 1.7
    assert 0.01 < (y == 0).mean() < 0.1
    assert (np.abs(y) > 2.5).mean() > 0.02  # some extreme labels


def test_registered_and_loadable():
    for name in ("synthetic-tiny", "synthetic-mosi"):
        assert DATASETS.get(name).synthetic
    ds = load_dataset("synthetic-tiny", seed=2, n=(20, 10, 15))
    assert ds.sizes() == {"train": 20, "valid": 10, "test": 15}
    assert ds.oracle is not None and ds.name != "synthetic-tiny"  # seed/overrides in the name
    assert json.dumps(ds.info)  # run configs store it as JSON
    assert load_dataset("synthetic-tiny").name == "synthetic-tiny"


def test_bad_options_are_named():
    with pytest.raises(TypeError, match="bogus"):
        make_synthetic("synthetic-tiny", bogus=1)
    with pytest.raises(KeyError, match="synthetic-huge"):
        make_synthetic("synthetic-huge")
    with pytest.raises(ValueError, match="seed"):
        make_synthetic("synthetic-tiny", seed=-1)
    with pytest.raises(ValueError, match="p_cue"):
        make_synthetic("synthetic-tiny", modalities={"text": {"p_cue": 0.0}})
    with pytest.raises(ValueError, match="n must be"):
        make_synthetic("synthetic-tiny", n=(5, 0, 5))


def test_modalities_override_merges_and_drops():
    ds = make_synthetic("synthetic-tiny", 1, n=(8, 8, 8), modalities={"vision": None})
    assert ds.modalities == ("text", "audio")
    b = full_batch(ds.splits["test"])
    assert ds.oracle(b).shape == (8,)


def test_cues_follow_the_law():
    """Projections on the law's direction: cue steps at a*s, the rest pure N(0, sigma^2)."""
    ds = make_synthetic("synthetic-tiny", 0, n=(3000, 1, 1), raters=0)  # label = latent s
    p = ds.oracle.params
    sd = ds.splits["train"]
    u = p.directions()["text"]
    law = p.modalities["text"]
    valid = np.arange(law.max_len)[None, :] < sd.lengths["text"][:, None]
    z = sd.x["text"] @ u
    y = np.broadcast_to(sd.y[:, None], z.shape)
    zero = valid & (y == 0)
    assert abs(z[zero].mean()) < 0.1 and abs(z[zero].std() - p.sigma) < 0.1
    # E[z | y] = p_cue * a * y: the least-squares slope over all valid steps
    slope = (z[valid] * y[valid]).sum() / (y[valid] ** 2).sum()
    assert slope == pytest.approx(law.p_cue * law.amp, rel=0.05)
    # Var[z | y] = sigma^2 + p (1 - p) a^2 y^2 (a mixture, not a shifted Gaussian)
    big = valid & (np.abs(y) >= 2.4)
    var = (z[big] - law.p_cue * law.amp * y[big]).var()
    want = p.sigma**2 + law.p_cue * (1 - law.p_cue) * law.amp**2 * (y[big] ** 2).mean()
    assert var == pytest.approx(want, rel=0.1)
    # directions orthogonal to u carry no label information
    g = np.random.default_rng(0).standard_normal(law.dim)
    v = g - (g @ u) * u
    zo = sd.x["text"] @ (v / np.linalg.norm(v))
    assert abs((zo[valid] * y[valid]).sum() / (y[valid] ** 2).sum()) < 0.02


def test_anisotropic_noise_keeps_u_at_sigma():
    ds = make_synthetic(
        "synthetic-tiny", 0, n=(4000, 1, 1), raters=0,
        modalities={"text": {"dim": 40, "rank": 4, "floor": 0.1}},
    )
    p, sd = ds.oracle.params, ds.splits["train"]
    B = p.bases()["text"]
    assert B.shape == (40, 4) and np.allclose(B.T @ B, np.eye(4))
    valid = np.arange(12)[None, :] < sd.lengths["text"][:, None]
    x0 = sd.x["text"][valid & (sd.y[:, None] == 0)]  # pure noise steps
    cov = np.cov(x0.T)
    inside = B.T @ cov @ B
    assert np.allclose(np.diag(inside), 1.0, atol=0.12)  # sigma^2 inside span(B), along u too
    P = np.eye(40) - B @ B.T
    outside = np.trace(P @ cov @ P) / 36
    assert outside == pytest.approx(0.01, rel=0.2)  # floor^2 elsewhere


def test_rater_kernel_hand_checked_and_matches_sampling():
    from scipy.special import ndtr

    one = SyntheticParams(
        name="k", modalities={"text": ModalityLaw(dim=1, max_len=2, rate=1.0, p_cue=0.5, amp=1.0)},
        n=(1, 1, 1), raters=1, rater_sigma=1.0,
    )
    K = one.label_kernel()
    assert K.shape == (61, 7) and np.allclose(K.sum(1), 1)
    i = int(np.argmin(np.abs(one.latent_grid() - 0.3)))
    assert K[i, 3] == pytest.approx(ndtr(0.2) - ndtr(-0.8))  # P(rating 0 | s = 0.3)
    assert K[i, 6] == pytest.approx(1 - ndtr(2.2))  # P(rating 3): the clipped tail
    two = dataclasses.replace(one, raters=2)
    K2 = two.label_kernel()
    assert np.allclose(two.label_grid(), np.arange(-6, 7) / 2)
    q = K[i]
    assert K2[i, 6] == pytest.approx(sum(q[k] * q[6 - k] for k in range(7)))  # y = 0
    # sampling agrees with the kernel: a prior with all its mass on s = 1.3
    p = PRESETS["synthetic-tiny"]
    w = np.zeros(61)
    w[int(np.argmin(np.abs(p.latent_grid() - 1.3)))] = 1
    ds = make_synthetic("synthetic-tiny", 0, n=(20000, 1, 1), prior_weights=tuple(w))
    y = ds.splits["train"].y
    grid = p.label_grid()
    freq = np.array([(np.abs(y - g) < 1e-4).mean() for g in grid])
    want = p.label_kernel()[w.argmax()]
    assert np.abs(freq - want).max() < 0.012
    assert freq.sum() == pytest.approx(1.0)


def test_synthetic_mosi_shapes_and_speed():
    t = time.perf_counter()
    ds = make_synthetic("synthetic-mosi", 0)
    gen = time.perf_counter() - t
    assert ds.sizes() == {"train": 1284, "valid": 229, "test": 686}
    te = ds.splits["test"]
    assert {m: te.x[m].shape[1:] for m in te.x} == {
        "text": (50, 768), "audio": (375, 5), "vision": (500, 20)
    }
    for m, lo in (("text", 3), ("audio", 4), ("vision", 4)):
        L = te.lengths[m]
        assert L.min() >= lo and len(np.unique(L)) > 20
        assert np.median(L) < 0.5 * te.x[m].shape[1]  # most utterances are short, like MOSI
    assert gen < 30  # a few seconds on a quiet machine; generous for a loaded CI box
    b = full_batch(te)
    t = time.perf_counter()
    pred = ds.oracle(b)
    assert time.perf_counter() - t < 10
    r = regression_metrics(pred, te.y)
    assert 0.78 < r["acc2_non0"] < 0.92
    b_nt = b.replace(present={**b.present, "text": torch.zeros_like(b.present["text"])})
    r_nt = regression_metrics(ds.oracle(b_nt), te.y)
    assert r_nt["acc2_non0"] < r["acc2_non0"] - 0.08 and r_nt["mae"] > r["mae"] + 0.2


# ---------------------------------------------------------------- the oracle


def test_oracle_beats_mean_and_ridge(tiny_big_test):
    from sklearn.linear_model import RidgeCV

    ds = make_synthetic("synthetic-tiny", seed=5, n=(240, 60, 3000))
    tr, te = ds.splits["train"], ds.splits["test"]

    def pooled(sd):
        feats = []
        for m in sd.x:
            L = np.maximum(sd.lengths[m], 1)[:, None]
            feats += [sd.x[m].sum(1) / L, sd.x[m].sum(1) / np.sqrt(L)]
        return np.concatenate(feats, 1)

    ridge = RidgeCV(alphas=np.logspace(-2, 3, 12)).fit(pooled(tr), tr.y)
    m_ridge = mae(np.clip(ridge.predict(pooled(te)), -3, 3), te.y)
    m_mean = mae(np.full(len(te), np.median(tr.y)), te.y)
    m_orc = mae(ds.oracle(full_batch(te)), te.y)
    assert m_orc < m_ridge < m_mean
    # the oracle is clearly ahead (3000 test samples: the gap is many standard errors) and the
    # ridge learned something
    assert m_orc < 0.9 * m_ridge
    assert m_ridge < 0.9 * m_mean


def test_oracle_worse_when_information_is_hidden(tiny_big_test):
    te = tiny_big_test.splits["test"]
    orc = tiny_big_test.oracle
    b = full_batch(te)
    full = mae(orc(b), te.y)
    no_text = b.replace(present={**b.present, "text": torch.zeros_like(b.present["text"])})
    m_nt = mae(orc(no_text), te.y)
    rng = np.random.default_rng(0)
    half = {m: b.mask[m] & torch.from_numpy(rng.random(b.mask[m].shape) < 0.5) for m in b.mask}
    m_half = mae(orc(b.replace(mask=half)), te.y)
    nothing = b.replace(present={m: torch.zeros_like(v) for m, v in b.present.items()})
    p_none = orc(nothing)
    assert full < m_half < m_nt or full < m_nt < m_half
    assert m_half > full + 0.05 and m_nt > full + 0.15
    # no observation at all: the prior median for everyone
    assert np.all(p_none == p_none[0]) and abs(p_none[0]) <= 0.2
    assert mae(p_none, te.y) > max(m_half, m_nt)


def test_oracle_never_reads_unobserved_content(tiny):
    te = tiny.splits["test"]
    b = full_batch(te)
    rng = np.random.default_rng(1)
    mask = {m: b.mask[m] & torch.from_numpy(rng.random(b.mask[m].shape) < 0.6) for m in b.mask}
    present = {**b.present, "audio": torch.from_numpy(rng.random(b.size) < 0.5)}
    b1 = b.replace(mask=mask, present=present)
    ref = tiny.oracle(b1)
    for fill in ("garbage", "nan"):
        x2 = {}
        for m, x in b1.x.items():
            hidden = ~b1.observed(m)[..., None]
            junk = torch.from_numpy(rng.normal(0, 50, x.shape).astype("f4"))
            if fill == "nan":
                junk = torch.full_like(x, float("nan"))
            x2[m] = torch.where(hidden, junk, x)
        out = tiny.oracle(b1.replace(x=x2))
        assert np.array_equal(ref, out), fill
    # and it does read observed content: changing it changes predictions
    x3 = {m: x * 3 for m, x in b1.x.items()}
    assert not np.array_equal(ref, tiny.oracle(b1.replace(x=x3)))


def test_oracle_matches_brute_force_per_step_loop(tiny):
    p = PRESETS["synthetic-tiny"]
    te = tiny.splits["test"]
    idx = np.arange(17)
    b = collate(te, idx)
    b = b.replace(present={**b.present, "vision": torch.from_numpy(np.arange(17) % 3 != 0)})
    post = tiny.oracle.latent_posterior(b)
    grid, prior, dirs = p.latent_grid(), p.prior(), p.directions()
    for i in range(len(idx)):
        logp = np.log(prior).copy()
        for m, law in p.modalities.items():
            obs = b.observed(m)[i].numpy()
            for t in np.flatnonzero(obs):
                z = float(b.x[m][i, t].double().numpy() @ dirs[m])
                for k, y in enumerate(grid):
                    logp[k] += math.log(
                        (1 - law.p_cue)
                        + law.p_cue * math.exp(law.amp * y * z - 0.5 * law.amp**2 * y**2)
                    )
        want = np.exp(logp - logp.max())
        want /= want.sum()
        np.testing.assert_allclose(post[i], want, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(tiny.oracle.posterior(b), post @ p.label_kernel(), atol=1e-12)


def test_oracle_independent_of_batching_and_trimming(tiny):
    te = tiny.splits["test"]
    whole = tiny.oracle(full_batch(te))
    parts = np.concatenate(
        [tiny.oracle(collate(te, np.arange(i, min(i + 7, len(te))))) for i in range(0, len(te), 7)]
    )
    untrimmed = tiny.oracle(collate(te, np.arange(len(te)), trim=False))
    assert np.array_equal(whole, parts) and np.array_equal(whole, untrimmed)


def _one_dim_params(prior_weights, p_cue):
    law = ModalityLaw(dim=1, max_len=4, rate=1.0, p_cue=p_cue, amp=1.0)
    return SyntheticParams(
        name="hand", modalities={"text": law}, n=(1, 1, 1), latent_step=1.0, raters=0,
        prior_weights=prior_weights,
    )


def _batch_1d(z_rows, params):
    """A Batch whose text projections are exactly ``z_rows`` (u = +-1 in one dim)."""
    u = params.directions()["text"][0]
    L = max(len(r) for r in z_rows)
    x = torch.zeros(len(z_rows), L, 1)
    mask = torch.zeros(len(z_rows), L, dtype=torch.bool)
    for i, r in enumerate(z_rows):
        x[i, : len(r), 0] = torch.tensor(r) * float(u)
        mask[i, : len(r)] = True
    return msakit.Batch(
        x={"text": x}, mask={"text": mask}, present={"text": mask.any(1)},
        y=torch.zeros(len(z_rows)), ids=[str(i) for i in range(len(z_rows))],
    )


def test_posterior_median_hand_checked():
    # grid -3..3 step 1; prior mass 0.5 at -1 and +1
    w = [0, 0, 0.5, 0, 0.5, 0, 0]
    # every step a cue (p = 1): post(+1) / post(-1) = exp(2 z)
    params = _one_dim_params(w, 1.0)
    orc = SyntheticOracle(params)
    # (values exact in float32, the storage type of x)
    b = _batch_1d([[0.25], [-0.5], [0.0], [0.5, -0.25]], params)
    post = orc.posterior(b)
    p_plus = np.array([1 / (1 + math.exp(-0.5)), 1 / (1 + math.exp(1.0)), 0.5,
                       1 / (1 + math.exp(-0.5))])
    np.testing.assert_allclose(post[:, 4], p_plus, rtol=1e-12)
    np.testing.assert_allclose(post[:, 2], 1 - p_plus, rtol=1e-12)
    # medians: +1, -1, an exact tie (midpoint 0), +1
    np.testing.assert_allclose(orc(b), [1.0, -1.0, 0.0, 1.0])

    # sparse cues (p = 0.5): r(y) = 0.5 + 0.5 exp(y z - 1/2) for y = +-1
    orc = SyntheticOracle(_one_dim_params(w, 0.5))
    b = _batch_1d([[1.0], [-2.0, 0.5]], orc.params)
    post = orc.posterior(b)

    def r(y, z):
        return 0.5 + 0.5 * math.exp(y * z - 0.5)

    want0 = r(1, 1.0) / (r(1, 1.0) + r(-1, 1.0))
    want1 = r(1, -2) * r(1, 0.5) / (r(1, -2) * r(1, 0.5) + r(-1, -2) * r(-1, 0.5))
    np.testing.assert_allclose(post[:, 4], [want0, want1], rtol=1e-12)
    np.testing.assert_allclose(orc(b), [1.0, -1.0])

    # three-point prior, nothing observed: the median is the middle point (CDF 0.3, 0.7)
    orc = SyntheticOracle(_one_dim_params([0, 0, 0.3, 0.4, 0.3, 0, 0], 1.0))
    b = _batch_1d([[0.0]], orc.params)
    b = b.replace(mask={"text": torch.zeros_like(b.mask["text"])})
    assert orc(b).tolist() == [0.0]
    # the median, not the mean (1.8 here); an exact 1/2 CDF tie gives the midpoint
    assert posterior_median(np.array([[0.0, 0.6, 0.0, 0.4]]), np.array([0, 1, 2, 3.0]))[0] == 1.0
    assert posterior_median(np.array([[0.2, 0.2, 0.1, 0.5]]), np.array([0, 1, 2, 3.0]))[0] == 2.5


def test_noise_sigma_makes_oracle_exact_again(tiny_big_test):
    te = tiny_big_test.splits["test"]
    b = full_batch(te)
    tau = 1.5
    g = torch.Generator().manual_seed(0)
    noisy = b.replace(x={m: x + tau * torch.randn(x.shape, generator=g) * b.mask[m][..., None]
                         for m, x in b.x.items()})
    orc = tiny_big_test.oracle
    naive = mae(orc(noisy), te.y)
    aware = mae(orc(noisy, noise_sigma=tau), te.y)
    assert aware < naive
    assert np.array_equal(orc.with_noise(tau)(noisy), orc(noisy, noise_sigma=tau))
    from msakit.data.batch import Corruption

    recorded = noisy.replace(corruption=Corruption(clean=b, missing_rate={}, noise_sigma=tau))
    assert np.array_equal(orc(recorded), orc(noisy, noise_sigma=tau))


def test_oracle_rejects_wrong_dims(tiny):
    b = full_batch(tiny.splits["test"])
    bad = b.replace(x={**b.x, "audio": torch.zeros(b.size, 3, 9)},
                    mask={**b.mask, "audio": torch.ones(b.size, 3, dtype=torch.bool)})
    with pytest.raises(ValueError, match="audio"):
        tiny.oracle(bad)


# ---------------------------------------------------------------- end to end


def test_train_reports_oracle_metrics(tmp_path):
    s = msakit.train("late_fusion", "synthetic-tiny", tmp_path, seeds=[1], epochs=2)
    assert "mae" in s["test"]
    orc = s["oracle"]["test"]["mae"]["mean"]
    ds = load_dataset("synthetic-tiny")
    te = ds.splits["test"]
    assert orc == pytest.approx(mae(ds.oracle(full_batch(te)), te.y), abs=1e-6)
    assert set(s["oracle"]) == {"train", "valid", "test"}
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["oracle"]["test"]["acc2_non0"]["mean"] == pytest.approx(
        s["oracle"]["test"]["acc2_non0"]["mean"]
    )
