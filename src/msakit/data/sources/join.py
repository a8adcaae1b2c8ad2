"""Datasets joined as domains: ``join:A,B[,...][:scale=S]`` (issue 11, MIDG).

``load_dataset("join:mosi-text,mosei-text")`` loads each named dataset (catalog names or
paths) and stacks their train/valid/test splits: ``SplitData.domain`` is the index of the
source dataset, ``info["domains"]`` the dataset names, sample ids become ``<dataset>/<id>``.
A dataset that already has domain groups (``synthetic-domains``) contributes each group as
``<dataset>/<group>``. The result is a multi-domain dataset for ``domain:A->B`` (``msakit
train --domain mosi-text->mosei-text``) and ``msakit matrix --protocols domain``.

Compatibility, each refused with one line naming what differs:

- features: per modality, the same feature extractor where the datasets record it (the
  text encoder of ``label.csv`` datasets in ``info["encoder"]``, or ``info["features"][m]``)
  and the same feature dims (:func:`~msakit.data.batch.concat_splits`). A modality absent
  from every row of one dataset (``mosi-text``'s audio/vision placeholders) takes the other
  datasets' dims and stays absent.
- labels: each dataset declares its scale (``label_scale``/``label_range``: ``mosi`` [-3, 3],
  ``sims`` [-1, 1], ``range`` [lo, hi], or classes). Datasets on one scale join as they are.
  Different scales join only onto a declared one, ``join:A,B:scale=mosi``: every label (and
  per-modality label) is mapped linearly from its dataset's range onto the declared one; the
  mapping is in ``info["label_scale_map"]`` and the metrics are that scale's. Class labels join
  only with the same class names.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from msakit.data.batch import SplitData, concat_splits
from msakit.data.dataset import LABEL_RANGES, SPLITS, MSADataset, scale_of
from msakit.data.registry import register_prefix_loader
from msakit.errors import ConfigError

PREFIX = "join:"


def parse_join(spec: str) -> tuple[list[str], str | None]:
    """``"join:a,b:scale=mosi"`` -> (``["a", "b"]``, ``"mosi"``)."""
    body = str(spec).strip()
    body = body[len(PREFIX):] if body.startswith(PREFIX) else body
    scale = None
    head, sep, opt = body.rpartition(":")
    if sep and "=" in opt:
        key, _, scale = (t.strip() for t in opt.partition("="))
        if key != "scale" or scale not in LABEL_RANGES:
            raise ConfigError(f"--dataset {spec!r}: option {opt!r}: expected scale=S with S one of "
                              f"{', '.join(LABEL_RANGES)} (the label scale every dataset is mapped onto)")
        body = head
    names = [n.strip() for n in body.split(",")]
    if len(names) < 2 or not all(names):
        raise ConfigError(f"--dataset {spec!r}: expected join:A,B[,...][:scale=S], at least two "
                          f"dataset names or paths")
    if len(set(names)) < len(names):
        raise ConfigError(f"--dataset {spec!r}: a dataset is named twice")
    return names, scale


def join_name(names: list[str], scale: str | None) -> str:
    return PREFIX + ",".join(names) + (f":scale={scale}" if scale else "")


def extractor(ds: MSADataset, m: str) -> str | None:
    """What produced modality ``m``'s features, where the dataset records it (else None)."""
    feats = ds.info.get("features")
    if isinstance(feats, dict) and feats.get(m):
        return str(feats[m])
    if m == "text" and ds.info.get("encoder"):
        return f"text encoder {ds.info['encoder']}"
    return None


def _absent(ds: MSADataset, m: str) -> bool:
    return not any(sd.present[m].any() for sd in ds.splits.values())


def _reshape_absent(sd: SplitData, m: str, dim: int) -> SplitData:
    """An all-absent modality as zeros of ``dim`` features (still absent, length 0)."""
    mask = {k: v for k, v in (sd.mask or {}).items() if k != m} or None
    return replace(sd, x={**sd.x, m: np.zeros((len(sd), 1, dim), dtype=np.float32)},
                   lengths=dict(sd.lengths), present=dict(sd.present), mask=mask)


def _relabel(sd: SplitData, prefix: str, f) -> SplitData:
    return replace(sd, y=f(sd.y), ids=[f"{prefix}/{i}" for i in sd.ids],
                   y_m=None if sd.y_m is None else {m: f(v) for m, v in sd.y_m.items()})


def join_datasets(datasets: list[MSADataset], names: list[str] | None = None,
                  scale: str | None = None, spec: str | None = None) -> MSADataset:
    """Stack ``datasets`` as domains (see the module doc); ``names`` label them (default the
    datasets' names), ``scale`` is the declared common label scale (``mosi`` or ``sims``)."""
    names = list(names or [d.name for d in datasets])
    spec = spec or join_name(names, scale)
    who = f"--dataset {spec!r}"
    if len(datasets) < 2:
        raise ConfigError(f"{who}: expected at least two datasets to join")
    if scale is not None and scale not in LABEL_RANGES:
        raise ConfigError(f"{who}: scale {scale!r}: expected one of {', '.join(LABEL_RANGES)}")
    # modalities and feature extractors
    mods = datasets[0].modalities
    for n, d in zip(names[1:], datasets[1:], strict=True):
        if set(d.modalities) != set(mods):
            raise ConfigError(f"{who}: {n!r} has modalities {list(d.modalities)}, {names[0]!r} has "
                              f"{list(mods)}; datasets join only with the same modalities")
    dims: dict[str, int] = {}
    for m in mods:
        have = [(n, d) for n, d in zip(names, datasets, strict=True) if not _absent(d, m)]
        ext = {n: extractor(d, m) for n, d in have if extractor(d, m) is not None}
        if len(set(ext.values())) > 1:
            detail = ", ".join(f"{n}: {e}" for n, e in ext.items())
            raise ConfigError(f"{who}: modality {m!r} differs ({detail}); datasets join only with "
                              f"the same feature extractor per modality")
        if have:
            dims[m] = have[0][1].dims[m]
    # labels
    classes = {d.classes for d in datasets}
    if any(c is not None for c in classes):
        if len(classes) > 1:
            raise ConfigError(f"{who}: label classes differ ("
                              + ", ".join(f"{n}: {scale_of(d)}" for n, d in zip(names, datasets, strict=True))
                              + "); class labels join only with the same class names")
        if scale is not None:
            raise ConfigError(f"{who}: scale={scale} applies to regression labels, these are classes")
    scales = {(d.label_scale, d.label_range) for d in datasets}
    if classes == {None} and scale is None and len(scales) > 1:
        detail = ", ".join(f"{n}: {scale_of(d)}" for n, d in zip(names, datasets, strict=True))
        raise ConfigError(f"{who}: label scales differ ({detail}); declare the common one, e.g. "
                          f"{join_name(names, 'mosi')} (labels are mapped linearly between the "
                          f"declared ranges)")
    if scale is not None:
        out_scale, out_range = scale, LABEL_RANGES[scale]
    else:
        out_scale, out_range = datasets[0].label_scale, datasets[0].label_range
    lo2, hi2 = out_range
    maps, funcs = {}, []
    for n, d in zip(names, datasets, strict=True):
        lo, hi = d.label_range
        if d.classes or (lo, hi) == (lo2, hi2):
            funcs.append(lambda y: y)
            maps[n] = f"{n}: {scale_of(d)} (unchanged)"
            continue
        a = (hi2 - lo2) / (hi - lo)
        b = lo2 - lo * a
        funcs.append(lambda y, a=a, b=b: np.clip(a * np.asarray(y, np.float64) + b, lo2, hi2))
        maps[n] = (f"{n}: {scale_of(d)} -> {out_scale} [{lo2:g}, {hi2:g}], y' = {a:g}*y"
                   + (f" {'+' if b >= 0 else '-'} {abs(b):g}" if b else ""))
    # domains: one per dataset, or one per group of a dataset that has groups
    dom_names: list[str] = []
    parts: dict[str, list[SplitData]] = {s: [] for s in SPLITS}
    for n, d, f in zip(names, datasets, funcs, strict=True):
        sub = d.info.get("domains") if d.splits["train"].domain is not None else None
        off = len(dom_names)
        dom_names += [f"{n}/{g}" for g in sub] if sub else [n]
        for s in SPLITS:
            sd = d.splits[s]
            for m in mods:
                if m in dims and _absent(d, m) and sd.dims[m] != dims[m]:
                    sd = _reshape_absent(sd, m, dims[m])
            sd = _relabel(sd, n, f)
            sd.domain = (sd.domain + off) if sub else np.full(len(sd), off, dtype=np.int64)
            parts[s].append(sd)
    try:
        splits = {s: concat_splits(p) for s, p in parts.items()}
    except ConfigError as e:
        raise ConfigError(f"{who}: {e}".replace("concat_splits: ", "")) from None
    info = {
        "format": "join", "joined": names, "domains": dom_names,
        "label_scale": f"{out_scale} [{lo2:g}, {hi2:g}]" if not datasets[0].classes else scale_of(datasets[0]),
        "label_scale_map": maps,
        "features": {m: extractor(d, m) for m in mods for d in datasets if extractor(d, m)},
        "parts": {n: d.info for n, d in zip(names, datasets, strict=True)},
    }
    if all(d.info.get("encoder") == datasets[0].info.get("encoder") for d in datasets)             and datasets[0].info.get("encoder"):
        info["encoder"] = datasets[0].info["encoder"]
    return MSADataset(
        name=spec, splits=splits, label_scale=out_scale, info=info,
        label_range=None if out_scale in LABEL_RANGES else out_range,
        classes=datasets[0].classes, standardized=all(d.standardized for d in datasets),
    )


def load_join(spec: str, **kw) -> MSADataset:
    """``join:A,B[:scale=S]`` -> the joined dataset; ``kw`` go to every part's loader."""
    from msakit.data.registry import load_dataset

    names, scale = parse_join(spec)
    if any(n.startswith(PREFIX) for n in names):
        raise ConfigError(f"--dataset {spec!r}: joins do not nest; name every dataset in one join")
    return join_datasets([load_dataset(n, **kw) for n in names], names, scale,
                         spec=join_name(names, scale))


register_prefix_loader(PREFIX, load_join)
