"""Closed-form reference baselines measured beside the neural models.

- :func:`ridge_concat`: ridge regression on the concatenated, mean-pooled features of every
  modality (complete input): the linear yardstick for a feature set.
- :func:`ridge_experts`: one ridge regression per observed-modality subset; under a corruption
  protocol each sample is scored by the expert for the subset it actually observes. With
  whole-modality missingness this is the ceiling of naive imputation for a linear model.

Ridge's alpha is chosen on the validation split only; the chosen model is then refit on train +
validation (no test data is ever looked at). On ``mosi-bclstm`` the validation split is carved
from the feature authors' train part, on which their text and video features were learned
with labels, so validation scores there are optimistic (see the dataset's docstring).
"""

from __future__ import annotations

import itertools
import warnings

import numpy as np
from sklearn.linear_model import Ridge

from msakit.corrupt import parse_protocol
from msakit.data.batch import SplitData, collate
from msakit.data.dataset import MSADataset
from msakit.metrics import dataset_metrics
from msakit.models.layers import masked_mean

ALPHAS = (0.01, 0.1, 1.0, 10.0, 100.0, 1e3, 1e4)


def pooled(split: SplitData, protocol: str | None = None, seed: int = 0, batch_size: int = 256):
    """Per-modality masked-mean features and observed flags of a split, under an optional
    protocol: ``({m: (N, D_m)}, {m: (N,) bool}, y)``."""
    prot = parse_protocol(protocol)
    feats: dict[str, list] = {m: [] for m in split.modalities}
    obs: dict[str, list] = {m: [] for m in split.modalities}
    ys = []
    for i in range(0, len(split), batch_size):
        b = collate(split, np.arange(i, min(i + batch_size, len(split))))
        if prot is not None:
            b = prot(b, seed=seed)
        for m in split.modalities:
            o = b.observed(m)
            feats[m].append(masked_mean(b.x[m], o).numpy())
            obs[m].append(o.any(1).numpy())
        ys.append(b.y.numpy())
    return (
        {m: np.concatenate(v) for m, v in feats.items()},
        {m: np.concatenate(v) for m, v in obs.items()},
        np.concatenate(ys),
    )


def _fit_ridge(xtr, ytr, xva, yva) -> Ridge:
    """Alpha by validation MAE, then refit on train + validation."""
    warnings.filterwarnings("ignore", message=".*ill-conditioned.*")
    maes = [np.mean(np.abs(Ridge(alpha=a).fit(xtr, ytr).predict(xva) - yva)) for a in ALPHAS]
    alpha = ALPHAS[int(np.argmin(maes))]
    return Ridge(alpha=alpha).fit(np.concatenate([xtr, xva]), np.concatenate([ytr, yva]))


def ridge_concat(ds: MSADataset, modalities: tuple[str, ...] | None = None) -> dict:
    """Test metrics of a ridge on concatenated pooled features (alpha chosen on valid)."""
    mods = modalities or ds.present_modalities
    data = {s: pooled(ds.splits[s]) for s in ("train", "valid", "test")}

    def X(s):
        return np.concatenate([data[s][0][m] for m in mods], 1)

    r = _fit_ridge(X("train"), data["train"][2], X("valid"), data["valid"][2])
    return dataset_metrics(ds)(r.predict(X("test")), data["test"][2])


def ridge_experts(ds: MSADataset, protocol: str | None, seed: int = 0) -> dict:
    """Test metrics when each test sample is scored by the ridge expert of its observed subset
    (experts trained on complete train data restricted to the subset; alpha on valid)."""
    mods = ds.present_modalities
    tr, va = pooled(ds.splits["train"]), pooled(ds.splits["valid"])
    te_x, te_obs, te_y = pooled(ds.splits["test"], protocol, seed)
    pred = np.zeros(len(te_y))
    mean_y = float(np.mean(tr[2]))
    pred[:] = mean_y  # nothing observed: the training mean (protocols never drop all)
    for k in range(1, len(mods) + 1):
        for sub in itertools.combinations(mods, k):
            rows = np.ones(len(te_y), bool)
            for m in mods:
                rows &= te_obs[m] if m in sub else ~te_obs[m]
            if not rows.any():
                continue
            r = _fit_ridge(
                np.concatenate([tr[0][m] for m in sub], 1), tr[2],
                np.concatenate([va[0][m] for m in sub], 1), va[2],
            )
            pred[rows] = r.predict(np.concatenate([te_x[m][rows] for m in sub], 1))
    return dataset_metrics(ds)(pred, te_y)


def median_predictor(ds: MSADataset) -> dict:
    """Test metrics of predicting the training labels' median for every sample (regression)."""
    y_tr, y_te = ds.splits["train"].y, ds.splits["test"].y
    return dataset_metrics(ds)(np.full(len(y_te), float(np.median(y_tr))), y_te)
