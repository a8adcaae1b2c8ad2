"""MMSA metric definitions against hand-computed cases."""

import numpy as np
import pytest

from msakit.evaluate.metrics import regression_metrics, sims_metrics


def test_acc2_has0_vs_non0_with_zero_labels():
    truth = [0.0, 1.0, -1.0, 2.0, 0.0]
    pred = [-0.5, 0.5, -0.2, -1.0, 0.3]
    m = regression_metrics(pred, truth)
    # has0: truth>=0 -> T,T,F,T,T ; pred>=0 -> F,T,F,F,T -> 3/5 agree
    assert m["acc2_has0"] == pytest.approx(3 / 5)
    # non0 drops the two zeros: truth>0 T,F,T ; pred>0 T,F,F -> 2/3
    assert m["acc2_non0"] == pytest.approx(2 / 3)


def test_weighted_f1_argument_order():
    # truth classes (non0): [T,T,T,F]; pred: [T,F,F,F]
    truth = [1.0, 2.0, 0.5, -1.0]
    pred = [1.0, -1.0, -0.5, -2.0]
    m = regression_metrics(pred, truth)
    # class T: precision 1, recall 1/3 -> f1 0.5 (support 3); class F: p 1/3, r 1 -> f1 .5 (support 1)
    assert m["f1_non0"] == pytest.approx(0.5)
    # swapping the order would change weights: check against sklearn's convention explicitly
    from sklearn.metrics import f1_score

    t, p = np.array(truth) > 0, np.array(pred) > 0
    assert m["f1_non0"] == pytest.approx(f1_score(t, p, average="weighted"))


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
    assert m["acc5"] == pytest.approx(4 / 6)
    assert m["mae"] == pytest.approx(np.mean(np.abs(np.clip(pred, -1, 1) - np.array(truth))))
    assert "acc7" not in m


def test_bad_input_names_problem():
    with pytest.raises(ValueError, match="pred has 2 values but truth has 3"):
        regression_metrics([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="non-finite"):
        regression_metrics([np.nan, 1], [1, 2])
