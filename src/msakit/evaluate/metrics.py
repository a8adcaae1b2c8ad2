"""Regression metrics exactly as MMSA defines them (thuiar/MMSA, ``utils/metricsTop.py``).

MOSI / MOSEI (labels in [-3, 3]): :func:`regression_metrics`.
CH-SIMS (labels in [-1, 1]): :func:`sims_metrics`.
Nothing is rounded here; round only when printing.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import f1_score

MOSI_METRICS = (
    "acc2_has0", "f1_has0", "acc2_non0", "f1_non0", "acc3", "acc5", "acc7", "mae", "corr",
)
SIMS_METRICS = ("acc2", "f1", "acc3", "acc5", "mae", "corr")


def _check(pred, truth) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(pred, dtype=np.float64).reshape(-1)
    t = np.asarray(truth, dtype=np.float64).reshape(-1)
    if p.shape != t.shape:
        raise ValueError(f"pred has {p.size} values but truth has {t.size}")
    if p.size == 0:
        raise ValueError("metrics need at least one sample")
    if not np.isfinite(p).all():
        raise ValueError(f"pred holds {int((~np.isfinite(p)).sum())} non-finite values")
    return p, t


def _corr(p: np.ndarray, t: np.ndarray) -> float:
    if p.std() == 0 or t.std() == 0:
        return 0.0  # np.corrcoef would give nan for a constant vector
    return float(np.corrcoef(p, t)[0, 1])


def _acc_clip(p: np.ndarray, t: np.ndarray, bound: float) -> float:
    return float(np.mean(np.round(np.clip(p, -bound, bound)) == np.round(np.clip(t, -bound, bound))))


def regression_metrics(pred, truth) -> dict[str, float]:
    """MMSA ``__eval_mosei_regression``: Acc-2 has0 (>= 0 vs < 0, all samples) and non0 (drop
    truth == 0, > 0 vs < 0), weighted F1 as ``f1_score(truth, pred, average="weighted")``,
    Acc-3/5/7 after clipping both to [-1,1] / [-2,2] / [-3,3] and ``np.round`` (half to even),
    MAE and Pearson correlation."""
    p, t = _check(pred, truth)
    out: dict[str, float] = {}
    ph, th = p >= 0, t >= 0
    out["acc2_has0"] = float(np.mean(ph == th))
    out["f1_has0"] = float(f1_score(th, ph, average="weighted"))
    nz = t != 0
    if nz.any():
        pn, tn = p[nz] > 0, t[nz] > 0
        out["acc2_non0"] = float(np.mean(pn == tn))
        out["f1_non0"] = float(f1_score(tn, pn, average="weighted"))
    else:
        out["acc2_non0"] = out["f1_non0"] = float("nan")
    out["acc3"] = _acc_clip(p, t, 1.0)
    out["acc5"] = _acc_clip(p, t, 2.0)
    out["acc7"] = _acc_clip(p, t, 3.0)
    out["mae"] = float(np.mean(np.abs(p - t)))
    out["corr"] = _corr(p, t)
    return out


def _bins(x: np.ndarray, cuts: list[float]) -> np.ndarray:
    """Class k for x in (cuts[k-1], cuts[k]]; the first class includes its lower bound."""
    return np.searchsorted(np.asarray(cuts), x, side="left")


def sims_metrics(pred, truth) -> dict[str, float]:
    """MMSA ``__eval_sims_regression``: clip to [-1, 1]; Acc-2 bins [-1,0] / (0,1]; Acc-3 bins
    [-1,-0.1] / (-0.1,0.1] / (0.1,1]; Acc-5 cut points -0.7, -0.1, 0.1, 0.7; weighted F1 on the
    2-class bins; MAE and correlation on the clipped values."""
    p, t = _check(pred, truth)
    p, t = np.clip(p, -1, 1), np.clip(t, -1, 1)
    out: dict[str, float] = {}
    p2, t2 = _bins(p, [0.0]), _bins(t, [0.0])
    out["acc2"] = float(np.mean(p2 == t2))
    out["f1"] = float(f1_score(t2, p2, average="weighted"))
    out["acc3"] = float(np.mean(_bins(p, [-0.1, 0.1]) == _bins(t, [-0.1, 0.1])))
    c5 = [-0.7, -0.1, 0.1, 0.7]
    out["acc5"] = float(np.mean(_bins(p, c5) == _bins(t, c5)))
    out["mae"] = float(np.mean(np.abs(p - t)))
    out["corr"] = _corr(p, t)
    return out


def metrics_for(label_scale: str):
    """The metric function for a dataset's label scale ('mosi' or 'sims')."""
    return {"mosi": regression_metrics, "sims": sims_metrics}[label_scale]
