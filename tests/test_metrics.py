"""Metric definitions: hand-computed cases, and agreement with MMSA 2.2.1's ``metricsTop``
(re-implemented below from MMSA's logic, on float32 inputs as MMSA receives them), including
labels that sit exactly on every cut point."""

import numpy as np
import pytest

import msakit.metrics as public
from msakit.metrics import (
    classification_metrics,
    metrics_for,
    range_metrics,
    regression_metrics,
    sims_metrics,
)


# ------------------------------------------------------------------ MMSA, re-implemented
def _mmsa_multiclass_acc(p, t):
    return np.sum(np.round(p) == np.round(t)) / float(len(t))


def mmsa_sims(pred, truth):
    """MMSA ``__eval_sims_regression``: float32 arrays compared with Python-float cut points
    by interval loops ``lo < x <= hi`` (numpy compares those in float32)."""
    from sklearn.metrics import f1_score

    p = np.clip(np.asarray(pred, np.float32), -1.0, 1.0)
    t = np.clip(np.asarray(truth, np.float32), -1.0, 1.0)

    def classes(x, cuts):
        out = x.copy()
        for i in range(len(cuts) - 1):
            out[(x > cuts[i]) & (x <= cuts[i + 1])] = i
        return out

    res = {}
    for k, cuts in ((2, [-1.01, 0.0, 1.01]), (3, [-1.01, -0.1, 0.1, 1.01]),
                    (5, [-1.01, -0.7, -0.1, 0.1, 0.7, 1.01])):
        pc, tc = classes(p, cuts), classes(t, cuts)
        res[f"acc{k}"] = _mmsa_multiclass_acc(pc, tc)
        if k == 2:
            res["f1"] = f1_score(tc, pc, average="weighted")
    res["mae"] = float(np.mean(np.abs(p - t)))
    with np.errstate(all="ignore"):
        res["corr"] = np.corrcoef(p, t)[0][1]
    return res


def mmsa_mosei(pred, truth):
    """MMSA ``__eval_mosei_regression`` on float32 arrays."""
    from sklearn.metrics import accuracy_score, f1_score

    p, t = np.asarray(pred, np.float32), np.asarray(truth, np.float32)
    res = {}
    for k, b in ((7, 3.0), (5, 2.0), (3, 1.0)):
        res[f"acc{k}"] = _mmsa_multiclass_acc(np.clip(p, -b, b), np.clip(t, -b, b))
    nz = np.array([i for i, e in enumerate(t) if e != 0])
    res["acc2_non0"] = accuracy_score(p[nz] > 0, t[nz] > 0)
    res["f1_non0"] = f1_score(t[nz] > 0, p[nz] > 0, average="weighted")
    res["acc2_has0"] = accuracy_score(p >= 0, t >= 0)
    res["f1_has0"] = f1_score(t >= 0, p >= 0, average="weighted")
    res["mae"] = float(np.mean(np.abs(p - t)))
    with np.errstate(all="ignore"):
        res["corr"] = np.corrcoef(p, t)[0][1]
    return res


SIMS_CUTS = [-1.0, -0.7, -0.1, 0.0, 0.1, 0.7, 1.0]
MOSI_CUTS = [-3.0, -2.5, -1.5, -0.5, 0.0, 0.5, 1.5, 2.5, 3.0]


def _around(cuts, eps):
    """Every cut point, and values just below / above it in float32."""
    c = np.asarray(cuts, np.float32)
    return np.concatenate([c, np.nextafter(c, np.float32(-9)), np.nextafter(c, np.float32(9)),
                           c - eps, c + eps]).astype(np.float32)


def test_sims_matches_mmsa_with_labels_on_every_cut_point():
    rng = np.random.default_rng(0)
    truth = np.concatenate([_around(SIMS_CUTS, 0.01), rng.uniform(-1, 1, 40)]).astype(np.float32)
    # SIMS labels are averages of five annotators in steps of 0.2: also on the grid
    truth = np.concatenate([truth, np.round(np.arange(-1, 1.01, 0.2), 1).astype(np.float32)])
    for pred in (
        rng.permutation(truth),  # predictions on cut points too
        rng.uniform(-1.2, 1.2, truth.size).astype(np.float32),
        truth.copy(),
    ):
        ours, ref = sims_metrics(pred, truth), mmsa_sims(pred, truth)
        for k in ("acc2", "acc3", "acc5", "f1"):
            assert ours[k] == pytest.approx(ref[k], abs=1e-12), k
        for k in ("mae", "corr"):
            assert ours[k] == pytest.approx(ref[k], abs=5e-5), k  # MMSA reports 4 decimals


def test_sims_label_on_a_cut_point_falls_in_the_lower_class_as_in_mmsa():
    # float32(0.1) <= float32(0.1): in (-0.1, 0.1], with a prediction of 0 it is a hit
    cases = [(0.1, 0.0, "acc5"), (-0.1, -0.5, "acc5"), (0.7, 0.5, "acc5"),
             (-0.7, -1.0, "acc5"), (0.1, 0.0, "acc3"), (-0.1, -1.0, "acc3"), (0.0, -0.3, "acc2")]
    for t, p, key in cases:
        m = sims_metrics(np.float32([p, 1.0]), np.float32([t, 1.0]))
        assert m[key] == 1.0, (t, p, key)
        assert m[key] == mmsa_sims([p, 1.0], [t, 1.0])[key]
    assert sims_metrics([0.0], [0.1])["acc3"] == 1.0  # float64 inputs: same float32 rule
    assert sims_metrics([0.2], [0.1])["acc3"] == 0.0
    # the float64 rule would put the label 0.1 above the cut: guard against regressing to it
    assert np.float64(np.float32(0.1)) > 0.1


def test_mosi_matches_mmsa_with_labels_on_every_cut_point():
    rng = np.random.default_rng(1)
    truth = np.concatenate([_around(MOSI_CUTS, 0.01), np.round(rng.uniform(-3, 3, 40) * 3) / 3])
    truth = truth.astype(np.float32)
    for pred in (rng.permutation(truth), rng.uniform(-3.5, 3.5, truth.size).astype(np.float32)):
        ours, ref = regression_metrics(pred, truth), mmsa_mosei(pred, truth)
        for k in ("acc2_has0", "f1_has0", "acc2_non0", "f1_non0", "acc3", "acc5", "acc7"):
            assert ours[k] == pytest.approx(ref[k], abs=1e-12), k
        for k in ("mae", "corr"):
            assert ours[k] == pytest.approx(ref[k], abs=5e-5), k
    # float64 input that rounds differently once in float32 (as MMSA's tensors are)
    p, t = np.array([1.4999999999, 0.3]), np.array([2.0, 0.0])
    assert regression_metrics(p, t)["acc7"] == mmsa_mosei(p, t)["acc7"] == 1.0


# ------------------------------------------------------------------ hand-computed cases
def test_acc2_has0_vs_non0_with_zero_labels():
    truth = [0.0, 1.0, -1.0, 2.0, 0.0]
    pred = [-0.5, 0.5, -0.2, -1.0, 0.3]
    m = regression_metrics(pred, truth)
    # has0: truth>=0 -> T,T,F,T,T ; pred>=0 -> F,T,F,F,T -> 3/5 agree
    assert m["acc2_has0"] == pytest.approx(3 / 5)
    # non0 drops the two zeros: truth>0 T,F,T ; pred>0 T,F,F -> 2/3
    assert m["acc2_non0"] == pytest.approx(2 / 3)


def test_weighted_f1_argument_order():
    # truth (non0) T,T,T,F; pred T,T,F,F. Class T: precision 1, recall 2/3 -> f1 0.8;
    # class F: precision 1/2, recall 1 -> f1 2/3. Weighted by TRUTH support (3, 1):
    # (3 * 0.8 + 2/3) / 4 = 23/30; by pred support (2, 2) it would be (0.8 + 2/3) / 2 = 11/15.
    truth = [1.0, 2.0, 0.5, -1.0]
    pred = [1.0, 2.0, -0.5, -2.0]
    m = regression_metrics(pred, truth)
    assert m["f1_non0"] == pytest.approx(23 / 30)
    assert m["f1_has0"] == pytest.approx(23 / 30)
    assert m["f1_non0"] != pytest.approx(11 / 15)
    # SIMS weighted F1 too: truth classes 1,1,1,0 ; pred 1,1,0,0
    assert sims_metrics([0.5, 0.5, -0.5, -0.5], [0.5, 0.6, 0.7, -0.5])["f1"] == pytest.approx(23 / 30)
    # and classification
    c = classification_metrics([1, 1, 0, 0], [1, 1, 1, 0])
    assert c["f1_weighted"] == pytest.approx(23 / 30)


def test_rounding_half_to_even_and_clipping():
    # np.round(0.5) = 0, np.round(1.5) = 2, np.round(2.5) = 2
    truth = [0.0, 2.0, 2.0, 3.0]
    pred = [0.5, 1.5, 2.5, 9.0]
    m = regression_metrics(pred, truth)
    assert m["acc7"] == 1.0  # 0==0, 2==2, 2==2, clip 9->3 == 3
    # acc5 clips to [-2,2]: truth 3->2, pred 9->2, 2.5->2 -> all equal
    assert m["acc5"] == 1.0
    # acc3 clips to [-1,1]: pred .5->0 vs truth 0 ok; others all 1 -> 1.0
    assert m["acc3"] == 1.0
    m2 = regression_metrics([0.5, -0.5, 1.49], [1.0, -1.0, 1.0])
    assert m2["acc7"] == pytest.approx(1 / 3)  # 0!=1, -0!=-1, 1==1


def test_mae_corr():
    m = regression_metrics([1.0, 2.0, 3.0], [1.5, 2.0, 2.0])
    assert m["mae"] == pytest.approx((0.5 + 0 + 1) / 3)
    assert m["corr"] == pytest.approx(np.corrcoef([1, 2, 3], [1.5, 2, 2])[0, 1])
    assert regression_metrics([1.0, 1.0], [0.5, 2.0])["corr"] == 0.0  # constant pred


def test_sims_bins():
    truth = [-1.0, -0.1, 0.0, 0.1, 0.5, 0.9]
    pred = [-0.8, -0.05, 0.05, 0.2, 0.7, 2.0]
    m = sims_metrics(pred, truth)
    # acc2: [-1,0] vs (0,1]; truth 0,0,0,1,1,1 ; pred 0,0,1,1,1,1 -> 5/6
    assert m["acc2"] == pytest.approx(5 / 6)
    # acc3 bins [-1,-.1],(-.1,.1],(.1,1]: truth 0,0,1,1,2,2 ; pred 0,1,1,2,2,2 -> 4/6
    assert m["acc3"] == pytest.approx(4 / 6)
    # acc5 cuts -.7,-.1,.1,.7: truth 0,1,2,2,3,4 ; pred 0,2,2,3,3,4 -> 4/6
    # (pred 0.7 is on the cut: class 3, (0.1, 0.7])
    assert m["acc5"] == pytest.approx(4 / 6)
    assert m["mae"] == pytest.approx(np.mean(np.abs(np.clip(pred, -1, 1) - np.array(truth))))
    assert "acc7" not in m


def test_range_metrics():
    truth = [1.0, 2.0, 5.0, 4.0]
    pred = [1.4, 2.6, 6.0, 3.5]
    m = range_metrics(pred, truth)
    assert m["mae"] == pytest.approx((0.4 + 0.6 + 1.0 + 0.5) / 4)
    assert m["rmse"] == pytest.approx(np.sqrt((0.16 + 0.36 + 1.0 + 0.25) / 4))
    assert m["corr"] == pytest.approx(np.corrcoef(pred, truth)[0, 1])
    # rounding: 1, 3, 6, 4 (3.5 -> 4 half to even) vs 1, 2, 5, 4 -> 2/4; clipped to [1, 5]: 3/4
    assert m["acc_round"] == pytest.approx(2 / 4)
    assert range_metrics(pred, truth, (1.0, 5.0))["acc_round"] == pytest.approx(3 / 4)
    assert metrics_for("range", label_range=(1, 5))(pred, truth)["acc_round"] == pytest.approx(3 / 4)


def test_classification_metrics_logits_and_labels():
    truth = [0, 0, 1, 2, 2, 2]
    logits = np.array([[3, 0, 0], [0, 2, 0], [0, 5, 1], [0, 0, 1], [1, 0, 0], [0, 0, 9]], float)
    m = classification_metrics(logits, truth)
    labels = logits.argmax(1)  # 0, 1, 1, 2, 0, 2
    assert m == classification_metrics(labels, truth)
    assert m["acc"] == pytest.approx(4 / 6)
    # class 0: p 1/2 r 1/2 f .5 ; class 1: p 1/2 r 1 f 2/3 ; class 2: p 1 r 2/3 f .8
    assert m["f1_macro"] == pytest.approx((0.5 + 2 / 3 + 0.8) / 3)
    assert m["f1_weighted"] == pytest.approx((2 * 0.5 + 1 * 2 / 3 + 3 * 0.8) / 6)
    # with n_classes, a class absent from truth and pred counts in the macro average
    m4 = classification_metrics(labels, truth, n_classes=4)
    assert m4["f1_macro"] == pytest.approx((0.5 + 2 / 3 + 0.8) / 4)
    fn = metrics_for("mosi", 3)
    assert fn(logits, truth) == m
    with pytest.raises(ValueError, match="columns"):
        fn(logits[:, :2], truth)
    with pytest.raises(ValueError, match="integer class"):
        classification_metrics([0.5, 1.0], [0, 1])
    with pytest.raises(ValueError, match="truth"):
        classification_metrics([0, 1], [0, -1])


def test_metrics_for_dispatch():
    assert metrics_for("mosi") is regression_metrics
    assert metrics_for("sims") is sims_metrics
    assert metrics_for("sims", 0) is sims_metrics
    assert metrics_for("range") is range_metrics
    assert set(metrics_for("sims", 2)([[0.0, 1.0]], [1])) == {"acc", "f1_weighted", "f1_macro"}
    with pytest.raises(ValueError, match="label_scale"):
        metrics_for("nosuch")
    with pytest.raises(ValueError, match="n_classes"):
        metrics_for("mosi", 1)


def test_public_module_reexports():
    assert public.regression_metrics is regression_metrics
    assert public.sims_metrics is sims_metrics
    assert public.classification_metrics is classification_metrics
    assert public.metrics_for is metrics_for


def test_bad_input_names_problem():
    with pytest.raises(ValueError, match="pred has 2 values but truth has 3"):
        regression_metrics([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="non-finite"):
        regression_metrics([np.nan, 1], [1, 2])
    with pytest.raises(ValueError, match="truth holds 1 non-finite"):
        sims_metrics([0.0, 1.0], [np.inf, 0.0])
    with pytest.raises(ValueError, match="at least one"):
        sims_metrics([], [])
