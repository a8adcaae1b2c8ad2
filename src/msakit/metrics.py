"""Metrics: MMSA-exact regression metrics, generic range regression, classification.

The public metrics API (numpy and scikit-learn only), used by training (validation) and by
evaluation alike::

    from msakit.metrics import regression_metrics, metrics_for
    regression_metrics(pred, truth)["acc2_non0"]

- MOSI / MOSEI (labels in [-3, 3]): :func:`regression_metrics`, as MMSA 2.2.1's
  ``MetricsTop.__eval_mosei_regression`` (thuiar/MMSA, ``utils/metricsTop.py``).
- CH-SIMS (labels in [-1, 1]): :func:`sims_metrics`, as MMSA's ``__eval_sims_regression``.
- Any other declared range (e.g. ICT-MMMO's 1-5 ratings): :func:`range_metrics`.
- K classes (logits or labels against class indices): :func:`classification_metrics`.
- :func:`metrics_for` picks one from a dataset's label scale and class count.

Precision, as MMSA: MMSA evaluates the model's float32 tensors and compares them with its cut
points as float32 (a Python float against a float32 array is compared in float32), so here
pred and truth are cast to float32 before any class is assigned: a SIMS label stored as 0.1
is float32(0.1), which is <= float32(0.1) and falls in (-0.1, 0.1] as in MMSA (in float64 it
would be 0.10000000149 > 0.1 and land in (0.1, 0.7]). MAE and correlation are then computed
in float64 from those float32 values (MMSA averages in float32 and rounds to 4 decimals; the
two agree to that rounding). A constant prediction gets correlation 0, not NaN.
Nothing is rounded here; round only when printing.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from sklearn.metrics import f1_score

MOSI_METRICS = (
    "acc2_has0", "f1_has0", "acc2_non0", "f1_non0", "acc3", "acc5", "acc7", "mae", "corr",
)
SIMS_METRICS = ("acc2", "f1", "acc3", "acc5", "mae", "corr")
RANGE_METRICS = ("mae", "rmse", "corr", "acc_round")
CLASSIFICATION_METRICS = ("acc", "f1_weighted", "f1_macro")

# MMSA's SIMS cut points: class k holds x in (cuts[k-1], cuts[k]] (the first class also -1)
SIMS_CUTS_2 = (0.0,)
SIMS_CUTS_3 = (-0.1, 0.1)
SIMS_CUTS_5 = (-0.7, -0.1, 0.1, 0.7)


def _flat(a, name: str, dtype) -> np.ndarray:
    try:
        return np.asarray(a, dtype=dtype).reshape(-1)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be numbers, got {type(a).__name__}") from None


def _check(pred, truth, dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """Flattened (pred, truth) as ``dtype``; same size, non-empty, finite. Values beyond the
    float32 range are clipped to it rather than becoming inf."""
    p, t = _flat(pred, "pred", np.float64), _flat(truth, "truth", np.float64)
    if p.shape != t.shape:
        raise ValueError(f"pred has {p.size} values but truth has {t.size}")
    if p.size == 0:
        raise ValueError("metrics need at least one sample")
    if not np.isfinite(p).all():
        raise ValueError(f"pred holds {int((~np.isfinite(p)).sum())} non-finite values")
    if not np.isfinite(t).all():
        raise ValueError(f"truth holds {int((~np.isfinite(t)).sum())} non-finite values")
    if dtype is np.float32:
        big = float(np.finfo(np.float32).max)
        p, t = np.clip(p, -big, big).astype(np.float32), np.clip(t, -big, big).astype(np.float32)
    return p, t


def _corr(p: np.ndarray, t: np.ndarray) -> float:
    p, t = p.astype(np.float64), t.astype(np.float64)
    if p.std() == 0 or t.std() == 0:
        return 0.0  # np.corrcoef would give nan for a constant vector
    return float(np.corrcoef(p, t)[0, 1])


def _mae(p: np.ndarray, t: np.ndarray) -> float:
    return float(np.mean(np.abs(p.astype(np.float64) - t.astype(np.float64))))


def _acc_clip(p: np.ndarray, t: np.ndarray, bound: float) -> float:
    """MMSA's multiclass accuracy: clip both to [-bound, bound], ``np.round`` (half to even)."""
    return float(np.mean(np.round(np.clip(p, -bound, bound)) == np.round(np.clip(t, -bound, bound))))


def _f1(truth_cls: np.ndarray, pred_cls: np.ndarray, average: str) -> float:
    """sklearn's F1 with MMSA's argument order (truth first: weights are truth supports)."""
    return float(f1_score(truth_cls, pred_cls, average=average, zero_division=0))


def regression_metrics(pred, truth) -> dict[str, float]:
    """MMSA ``__eval_mosei_regression`` (MOSI / MOSEI): Acc-2 has0 (>= 0 vs < 0, all samples)
    and non0 (drop truth == 0, > 0 vs < 0), weighted F1 as ``f1_score(truth, pred,
    average="weighted")``, Acc-3/5/7 after clipping both to [-1,1] / [-2,2] / [-3,3] and
    ``np.round`` (half to even), MAE and Pearson correlation; on float32 values (module doc)."""
    p, t = _check(pred, truth)
    out: dict[str, float] = {}
    ph, th = p >= 0, t >= 0
    out["acc2_has0"] = float(np.mean(ph == th))
    out["f1_has0"] = _f1(th, ph, "weighted")
    nz = t != 0
    if nz.any():
        pn, tn = p[nz] > 0, t[nz] > 0
        out["acc2_non0"] = float(np.mean(pn == tn))
        out["f1_non0"] = _f1(tn, pn, "weighted")
    else:
        out["acc2_non0"] = out["f1_non0"] = float("nan")
    out["acc3"] = _acc_clip(p, t, 1.0)
    out["acc5"] = _acc_clip(p, t, 2.0)
    out["acc7"] = _acc_clip(p, t, 3.0)
    out["mae"] = _mae(p, t)
    out["corr"] = _corr(p, t)
    return out


def sims_bins(x: np.ndarray, cuts) -> np.ndarray:
    """Class k for x in (cuts[k-1], cuts[k]] (the first class includes everything below),
    comparing in float32 with float32 cut points, as MMSA does."""
    x = np.asarray(x, dtype=np.float32)
    return np.searchsorted(np.asarray(cuts, dtype=np.float32), x, side="left")


def sims_metrics(pred, truth) -> dict[str, float]:
    """MMSA ``__eval_sims_regression`` (CH-SIMS): clip both to [-1, 1]; Acc-2 bins [-1, 0] /
    (0, 1]; Acc-3 bins [-1, -0.1] / (-0.1, 0.1] / (0.1, 1]; Acc-5 cut points -0.7, -0.1, 0.1,
    0.7; weighted F1 on the 2-class bins; MAE and correlation on the clipped values. Bins are
    assigned in float32 (module doc): a label of exactly 0.1 is in (-0.1, 0.1]."""
    p, t = _check(pred, truth)
    p, t = np.clip(p, -1, 1), np.clip(t, -1, 1)
    out: dict[str, float] = {}
    p2, t2 = sims_bins(p, SIMS_CUTS_2), sims_bins(t, SIMS_CUTS_2)
    out["acc2"] = float(np.mean(p2 == t2))
    out["f1"] = _f1(t2, p2, "weighted")
    out["acc3"] = float(np.mean(sims_bins(p, SIMS_CUTS_3) == sims_bins(t, SIMS_CUTS_3)))
    out["acc5"] = float(np.mean(sims_bins(p, SIMS_CUTS_5) == sims_bins(t, SIMS_CUTS_5)))
    out["mae"] = _mae(p, t)
    out["corr"] = _corr(p, t)
    return out


def range_metrics(pred, truth, label_range: tuple[float, float] | None = None) -> dict[str, float]:
    """Regression on a declared range (e.g. ratings 1-5): MAE, RMSE, Pearson correlation on
    the raw values, and ``acc_round``: accuracy of the prediction rounded to the nearest
    integer (half to even) against the rounded label, both clipped to ``label_range`` when
    given (the Acc-7 idea of MOSI for any integer scale)."""
    p, t = _check(pred, truth, np.float64)
    d = p - t
    out = {"mae": float(np.mean(np.abs(d))), "rmse": float(np.sqrt(np.mean(d * d)))}
    out["corr"] = _corr(p, t)
    if label_range is not None:
        lo, hi = float(label_range[0]), float(label_range[1])
        p, t = np.clip(p, lo, hi), np.clip(t, lo, hi)
    out["acc_round"] = float(np.mean(np.round(p) == np.round(t)))
    return out


def classification_metrics(pred, truth, n_classes: int | None = None) -> dict[str, float]:
    """K-class metrics of the MSA papers: accuracy, weighted F1 (``f1_score(truth, pred,
    average="weighted")``, MMSA's), and macro F1. ``pred``: (N, K) logits / probabilities
    (argmax is taken) or (N,) class indices; ``truth``: (N,) class indices. With
    ``n_classes``, macro F1 averages over all K classes (a class never predicted nor present
    counts 0); without it, over the classes that occur in truth or pred (sklearn's default)."""
    p = np.asarray(pred)
    t = _flat(truth, "truth", np.float64)
    if p.ndim == 2:
        if p.shape[0] != t.size:
            raise ValueError(f"pred has {p.shape[0]} rows but truth has {t.size}")
        if n_classes is not None and p.shape[1] != n_classes:
            raise ValueError(f"pred has {p.shape[1]} columns, expected {n_classes} class scores")
        if p.size and not np.isfinite(p.astype(np.float64)).all():
            raise ValueError("pred holds non-finite scores")
        pl = p.argmax(1) if p.size else np.zeros(0, int)
    elif p.ndim <= 1:
        pl = _flat(p, "pred", np.float64)
        if pl.shape != t.shape:
            raise ValueError(f"pred has {pl.size} values but truth has {t.size}")
        if not (np.isfinite(pl).all() and (pl == np.round(pl)).all()):
            raise ValueError("pred must be (N, K) class scores or (N,) integer class labels")
    else:
        raise ValueError(f"pred must be (N, K) scores or (N,) labels, got shape {p.shape}")
    if t.size == 0:
        raise ValueError("metrics need at least one sample")
    if not (np.isfinite(t).all() and (t == np.round(t)).all() and (t >= 0).all()):
        raise ValueError("truth must hold integer class indices >= 0")
    if n_classes is not None and (t >= n_classes).any():
        raise ValueError(f"truth holds class indices >= n_classes={n_classes}")
    pl, t = np.asarray(pl).astype(np.int64), t.astype(np.int64)
    labels = None if n_classes is None else list(range(n_classes))
    return {
        "acc": float(np.mean(pl == t)),
        "f1_weighted": float(f1_score(t, pl, average="weighted", zero_division=0)),
        "f1_macro": float(f1_score(t, pl, labels=labels, average="macro", zero_division=0)),
    }


def metrics_for(
    label_scale: str, n_classes: int = 0, label_range: tuple[float, float] | None = None
) -> Callable[..., dict[str, float]]:
    """The metric function ``fn(pred, truth) -> {name: value}`` for a dataset.

    ``n_classes >= 2``: :func:`classification_metrics` (pred (N, K) logits or (N,) labels);
    otherwise by ``label_scale``: ``"mosi"`` -> :func:`regression_metrics`, ``"sims"`` ->
    :func:`sims_metrics`, ``"range"`` -> :func:`range_metrics` (clipped to ``label_range``
    for ``acc_round`` when given)."""
    n_classes = int(n_classes or 0)
    if n_classes == 1 or n_classes < 0:
        raise ValueError(f"n_classes={n_classes}: expected 0 (regression) or >= 2")
    if n_classes >= 2:

        def classify(pred, truth):
            return classification_metrics(pred, truth, n_classes)

        classify.__doc__ = classification_metrics.__doc__
        return classify
    if label_scale == "range":
        if label_range is None:
            return range_metrics

        def ranged(pred, truth):
            return range_metrics(pred, truth, label_range)

        ranged.__doc__ = range_metrics.__doc__
        return ranged
    fns = {"mosi": regression_metrics, "sims": sims_metrics}
    if label_scale not in fns:
        raise ValueError(
            f"label_scale={label_scale!r}: expected one of 'mosi', 'sims', 'range' "
            f"(or n_classes >= 2 for classification)"
        )
    return fns[label_scale]


def dataset_metrics(ds) -> Callable[..., dict[str, float]]:
    """:func:`metrics_for` with a dataset's label scale, class count and declared range."""
    return metrics_for(ds.label_scale, len(ds.classes or ()), ds.label_range)


def metric_names(label_scale: str, n_classes: int = 0) -> tuple[str, ...]:
    """The keys :func:`metrics_for` ``(label_scale, n_classes)`` returns."""
    if n_classes and n_classes >= 2:
        return CLASSIFICATION_METRICS
    return {"mosi": MOSI_METRICS, "sims": SIMS_METRICS, "range": RANGE_METRICS}[label_scale]
