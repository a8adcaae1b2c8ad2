"""A data report: what a dataset holds, and warnings for what silently ruins a run.

:func:`inspect_dataset` computes, per split: size; per modality its dim, padded length,
presence rate (share of samples where the modality exists and has an observed step),
observed-step rate (observed steps / (present samples x padded length)), and the feature
range over **observed steps only** (min, max, mean |x|, std pooled over all features, the
largest per-feature std); the share of samples with no modality at all; the label
distribution (regression: min / mean / std / max and a 10-bin histogram over the declared
range, plus the count per value when there are at most 15 distinct values; classification:
the count per class).

Warnings (``report["warnings"]``, plain sentences; ``report["warning_kinds"]`` the same in
order as short keys):

- ``eval_only_modality``: a modality present in valid/test but never in training;
- ``nothing_observed``: samples with no observed step in any modality;
- ``constant_features``: features with a single value over the observed training steps
  (counted per modality; a constant feature carries nothing and breaks z-scoring);
- ``unnormalised``: unless the dataset says it is standardised, the largest per-feature std
  over observed training steps above 10, or some |value| above 100 (or every value tiny:
  std and |max| below 0.01);
- ``nonfinite``: NaN or inf at observed steps;
- ``label_range``: labels outside the declared range (regression), or not a class index
  (classification); ``missing_class``: a class with no training sample.

One pass over each array in chunks of samples (float64 accumulators), so a synthetic-mosi-sized
dataset (1284 x 50 x 768 text) takes well under a second and no full-size temporary is made.
"""

from __future__ import annotations

import math

import numpy as np

# thresholds of the "unnormalised" warning (documented above)
STD_HIGH, ABS_HIGH, TINY = 10.0, 100.0, 0.01
HIST_BINS = 10
MAX_VALUES = 15  # regression labels with at most this many distinct values: count per value
_CHUNK_ELEMS = 1 << 22  # samples per chunk ~ this many floats


def _feature_stats(sd, m: str) -> dict:
    """Per-feature count/sum/sumsq/min/max over the observed steps of ``sd.x[m]``, chunked
    over samples."""
    x = sd.x[m]
    n, L, D = x.shape
    obs_len = np.where(sd.present[m], np.minimum(sd.lengths[m], L), 0)
    s = np.zeros(D)
    ss = np.zeros(D)
    mn = np.full(D, np.inf)
    mx = np.full(D, -np.inf)
    sabs = 0.0
    count = 0
    nonfinite = 0
    step = max(1, _CHUNK_ELEMS // max(L * D, 1))
    for i in range(0, n, step):
        lens = obs_len[i:i + step]
        if not lens.any():
            continue
        Lc = int(lens.max())
        rows = np.arange(i, min(i + step, n))
        obs = x[i:i + step, :Lc][sd.observed(m, rows, Lc)]  # (k, D) observed steps
        cmin, cmax = obs.min(0), obs.max(0)
        if not (np.isfinite(cmin).all() and np.isfinite(cmax).all()):  # NaN/inf propagate
            fin = np.isfinite(obs)
            nonfinite += int((~fin).sum())
            obs = np.where(fin, obs, 0).astype(x.dtype)
            cmin, cmax = obs.min(0), obs.max(0)
        s += obs.sum(0, dtype=np.float64)
        ss += np.einsum("kd,kd->d", obs, obs, dtype=np.float64)
        mn = np.minimum(mn, cmin)
        mx = np.maximum(mx, cmax)
        sabs += float(np.abs(obs).sum(dtype=np.float64))
        count += len(obs)
    return {"count": count, "sum": s, "sumsq": ss, "min": mn, "max": mx, "sabs": sabs,
            "nonfinite": nonfinite}


def _modality_report(sd, m: str) -> tuple[dict, dict]:
    x = sd.x[m]
    n, L, D = x.shape
    present = np.asarray(sd.present[m]) & (np.asarray(sd.lengths[m]) > 0)
    st = _feature_stats(sd, m)
    n_pres = int(present.sum())
    out = {
        "dim": D, "max_len": L,
        "present_rate": n_pres / n if n else 0.0,
        "observed_step_rate": st["count"] / (n_pres * L) if n_pres and L else 0.0,
        "observed_steps": st["count"],
    }
    c = st["count"]
    if c:
        mean = st["sum"] / c
        var = np.maximum(st["sumsq"] / c - mean ** 2, 0.0)
        gmean = st["sum"].sum() / (c * D)
        gvar = max(st["sumsq"].sum() / (c * D) - gmean ** 2, 0.0)
        out.update({
            "min": float(st["min"].min()), "max": float(st["max"].max()),
            "mean_abs": st["sabs"] / (c * D), "std": math.sqrt(gvar),
            "max_feature_std": float(np.sqrt(var).max()),
            "constant_features": int((st["min"] == st["max"]).sum()),
            "nonfinite": st["nonfinite"],
        })
    return out, st


def _label_report(y: np.ndarray, classes, lr) -> dict:
    y = np.asarray(y, dtype=np.float64)
    if classes:
        k = len(classes)
        valid = np.isfinite(y) & (y == np.round(y)) & (y >= 0) & (y < k)
        counts = np.bincount(y[valid].astype(np.int64), minlength=k)
        return {"counts": {str(c): int(v) for c, v in zip(classes, counts, strict=True)},
                "invalid": int((~valid).sum())}
    fin = y[np.isfinite(y)]
    if not len(fin):
        return {"n": 0, "nonfinite": int(len(y))}
    lo, hi = lr if lr is not None else (float(fin.min()), float(fin.max()))
    if hi <= lo:
        hi = lo + 1.0
    counts, edges = np.histogram(np.clip(fin, lo, hi), bins=HIST_BINS, range=(lo, hi))
    out = {
        "min": float(fin.min()), "mean": float(fin.mean()), "std": float(fin.std()),
        "max": float(fin.max()), "hist": {"edges": [float(e) for e in edges],
                                          "counts": [int(v) for v in counts]},
        "nonfinite": int(len(y) - len(fin)),
    }
    vals, cnt = np.unique(fin, return_counts=True)
    if len(vals) <= MAX_VALUES:  # ratings on a grid: the count per value says more
        out["value_counts"] = {f"{v:g}": int(c) for v, c in zip(vals, cnt, strict=True)}
    if lr is not None:
        out["outside_range"] = int(((fin < lr[0]) | (fin > lr[1])).sum())
    return out


def inspect_dataset(ds) -> dict:
    """A JSON-able summary of ``ds`` (an MSADataset) with ``warnings``; see the module doc."""
    classes = tuple(ds.classes or ())
    is_cls = ds.task == "classification"
    lr = None if is_cls or ds.label_range is None else tuple(map(float, ds.label_range))
    standardized = bool(ds.standardized or ds.info.get("standardized"))
    mods = list(ds.modalities)
    rep: dict = {
        "name": ds.name,
        "task": "classification" if is_cls else "regression",
        "label_scale": ds.label_scale,
        "label_range": list(lr) if lr else None,
        "classes": list(classes) if classes else None,
        "standardized": standardized,
        "modalities": mods,
        "dims": dict(ds.dims),
        "splits": {},
    }
    warn: list[tuple[str, str]] = []
    train_stats: dict[str, dict] = {}
    for s, sd in ds.splits.items():
        n = len(sd)
        srep: dict = {"n": n, "modalities": {}}
        any_obs = np.zeros(n, bool)
        for m in mods:
            mrep, st = _modality_report(sd, m)
            srep["modalities"][m] = mrep
            any_obs |= np.asarray(sd.present[m]) & (np.asarray(sd.lengths[m]) > 0)
            if s == "train":
                train_stats[m] = {**mrep, "_st": st}
            if mrep.get("nonfinite"):
                warn.append(("nonfinite", f"{s}/{m}: {mrep['nonfinite']} NaN/inf values at "
                                          f"observed steps"))
        none = int((~any_obs).sum())
        srep["none_present"] = none / n if n else 0.0
        srep["none_present_count"] = none
        if none:
            warn.append(("nothing_observed",
                         f"{s}: {none} of {n} samples ({none / n:.1%}) have no observed step in "
                         f"any modality; a model can only predict a constant for them"))
        srep["labels"] = _label_report(sd.y, classes if is_cls else None, lr)
        lab = srep["labels"]
        if is_cls and lab["invalid"]:
            warn.append(("label_range", f"{s}: {lab['invalid']} labels are not class indices "
                                        f"0..{len(classes) - 1}"))
        if not is_cls and (lab.get("outside_range") or lab.get("nonfinite")):
            bad = lab.get("outside_range", 0)
            what = f"{bad} labels outside the declared range [{lr[0]:g}, {lr[1]:g}]" if bad \
                else ""
            if lab.get("nonfinite"):
                what += ("; " if what else "") + f"{lab['nonfinite']} labels are NaN/inf"
            warn.append(("label_range", f"{s}: {what} (observed {lab.get('min', 0):g} .. "
                                        f"{lab.get('max', 0):g})"))
        rep["splits"][s] = srep
    # modality present at evaluation but never in training
    for m in mods:
        tr = rep["splits"].get("train", {}).get("modalities", {}).get(m, {})
        if tr.get("present_rate", 0) == 0:
            evals = [s for s in ("valid", "test")
                     if rep["splits"].get(s, {}).get("modalities", {}).get(m, {})
                     .get("present_rate", 0) > 0]
            if evals:
                warn.append(("eval_only_modality",
                             f"{m}: present in {'/'.join(evals)} but never in train; a model "
                             f"cannot learn to use it"))
    # constant features and scales, on the training split
    for m, t in train_stats.items():
        if not t.get("observed_steps"):
            continue
        if t["constant_features"]:
            warn.append(("constant_features",
                         f"{m}: {t['constant_features']} of {t['dim']} features are constant "
                         f"over the observed training steps"))
        if not standardized:
            amax = max(abs(t["min"]), abs(t["max"]))
            if t["max_feature_std"] > STD_HIGH or amax > ABS_HIGH:
                warn.append(("unnormalised",
                             f"{m}: unnormalised scale over observed training steps (largest "
                             f"feature std {t['max_feature_std']:.3g}, |x| up to {amax:.3g}); "
                             f"models z-score inputs with training-split statistics by default "
                             f"(normalize=auto); never train this with --set normalize=none"))
            elif t["max_feature_std"] < TINY and amax < TINY:
                warn.append(("unnormalised",
                             f"{m}: every feature is tiny over observed training steps (std "
                             f"{t['max_feature_std']:.3g}, |x| up to {amax:.3g}); standardise "
                             f"them with training-split statistics"))
        t.pop("_st", None)
    if is_cls and "train" in rep["splits"]:
        empty = [c for c, v in rep["splits"]["train"]["labels"]["counts"].items() if v == 0]
        if empty:
            warn.append(("missing_class", f"classes with no training sample: {empty}"))
    rep["warnings"] = [w for _, w in warn]
    rep["warning_kinds"] = [k for k, _ in warn]
    return rep


def _pct(v: float) -> str:
    return f"{100 * v:.0f}%" if v in (0, 1) or v >= 0.01 else f"{100 * v:.1f}%"


def _g(v: float) -> str:
    return f"{v:.3g}"


def format_report(report: dict, short: bool = False) -> str:
    """Plain text of :func:`inspect_dataset`'s dict; ``short``: a few lines for a training log."""
    r = report
    mods = r["modalities"]
    if r["task"] == "classification":
        task = f"classification, {len(r['classes'])} classes ({', '.join(r['classes'])})"
    else:
        lr = r["label_range"]
        task = "regression" + (f" on [{lr[0]:g}, {lr[1]:g}]" if lr else "")
        task += f" ({r['label_scale']})"
    dims = ", ".join(f"{m} {r['dims'][m]}" for m in mods)
    head = (f"dataset {r['name']}: {task}; {dims}; "
            f"{'standardised' if r['standardized'] else 'not standardised'}")
    lines = [head]
    if short:
        for s, sp in r["splits"].items():
            pres = " ".join(
                f"{m[0]} {_pct(sp['modalities'][m]['present_rate'])}/"
                f"{_pct(sp['modalities'][m]['observed_step_rate'])}" for m in mods)
            lines.append(f"  {s}: n={sp['n']}, present/steps observed: {pres}"
                         + (f", nothing observed {sp['none_present_count']}"
                            if sp["none_present_count"] else ""))
        lines += [f"  warning: {w}" for w in r["warnings"]]
        return "\n".join(lines)
    lines.append("")
    lines.append("split   n      no modality  " + "  ".join(f"{m + ' present/steps':<24}"
                                                        for m in mods))
    for s, sp in r["splits"].items():
        cells = "  ".join(
            f"{_pct(sp['modalities'][m]['present_rate']) + ' / ' + _pct(sp['modalities'][m]['observed_step_rate']):<24}"
            for m in mods)
        lines.append(f"{s:<7} {sp['n']:<6} {_pct(sp['none_present']):<12} {cells}")
    lines.append("")
    lines.append("features over observed steps (min, max, mean |x|, std, largest feature std, "
                 "constant features)")
    for s, sp in r["splits"].items():
        for m in mods:
            mr = sp["modalities"][m]
            if not mr.get("observed_steps"):
                lines.append(f"  {s:<6} {m:<7} no observed steps")
                continue
            lines.append(
                f"  {s:<6} {m:<7} L={mr['max_len']:<4} min {_g(mr['min']):>8}  max "
                f"{_g(mr['max']):>8}  mean|x| {_g(mr['mean_abs']):>7}  std {_g(mr['std']):>7}  "
                f"max std {_g(mr['max_feature_std']):>7}  constant {mr['constant_features']}/"
                f"{mr['dim']}")
    lines.append("")
    lines.append("labels")
    for s, sp in r["splits"].items():
        lab = sp["labels"]
        if r["task"] == "classification":
            counts = ", ".join(f"{c}: {v}" for c, v in lab["counts"].items())
            lines.append(f"  {s:<6} {counts}" + (f"; invalid {lab['invalid']}"
                                                 if lab["invalid"] else ""))
        elif lab.get("n") == 0:
            lines.append(f"  {s:<6} no finite labels")
        else:
            e, c = lab["hist"]["edges"], lab["hist"]["counts"]
            lines.append(f"  {s:<6} min {_g(lab['min'])}  mean {_g(lab['mean'])}  std "
                         f"{_g(lab['std'])}  max {_g(lab['max'])}")
            if "value_counts" in lab:
                lines.append("         per value: " + ", ".join(
                    f"{v}: {k}" for v, k in lab["value_counts"].items()))
            else:
                lines.append(f"         histogram [{e[0]:g} .. {e[-1]:g}] in {len(c)} bins: "
                             + " ".join(str(v) for v in c))
    lines.append("")
    if r["warnings"]:
        lines.append(f"warnings ({len(r['warnings'])})")
        lines += [f"  - {w}" for w in r["warnings"]]
    else:
        lines.append("warnings: none")
    return "\n".join(lines)
