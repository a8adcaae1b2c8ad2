"""Public metrics API (the metric code itself needs only numpy and scikit-learn).

::

    from msakit.metrics import regression_metrics, sims_metrics, classification_metrics

    regression_metrics(pred, truth)   # MOSI / MOSEI, as MMSA 2.2.1's metricsTop
    sims_metrics(pred, truth)         # CH-SIMS, as MMSA 2.2.1's metricsTop
    range_metrics(pred, truth, (1, 5))  # any declared range: mae, rmse, corr, acc_round
    classification_metrics(logits_or_labels, truth)  # acc, f1_weighted, f1_macro
    metrics_for("sims")  # or metrics_for(label_scale, n_classes): the dataset's function

Definitions and the float32 convention are in :mod:`msakit.evaluate.metrics`.
"""

from msakit.evaluate.metrics import (
    CLASSIFICATION_METRICS,
    MOSI_METRICS,
    RANGE_METRICS,
    SIMS_METRICS,
    classification_metrics,
    metric_names,
    metrics_for,
    range_metrics,
    regression_metrics,
    sims_metrics,
)

__all__ = [
    "CLASSIFICATION_METRICS",
    "MOSI_METRICS",
    "RANGE_METRICS",
    "SIMS_METRICS",
    "classification_metrics",
    "metric_names",
    "metrics_for",
    "range_metrics",
    "regression_metrics",
    "sims_metrics",
]
