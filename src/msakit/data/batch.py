"""The one data contract: :class:`SplitData` holds a dataset split, :class:`Batch` a minibatch.

Every reader (MMSA pickle, ``.csd``, bc-LSTM CSV, ``label.csv``, synthetic) produces
:class:`SplitData`; :func:`collate` turns a list of row indices into a :class:`Batch`.
Models learn what is missing from ``mask`` and ``present``, never from zeros.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # torch loads on first use, so `msakit datasets` starts fast
    import torch

from msakit.errors import ConfigError, DataError

MODALITIES = ("text", "audio", "vision")
SHORT = {"l": "text", "t": "text", "a": "audio", "v": "vision"}


@dataclass(repr=False)
class SplitData:
    """One split of a dataset, stored padded.

    x[m]: (N, L_m, D_m) float32 features, zero beyond each sample's length.
    lengths[m]: (N,) int64 number of valid steps (0 when the modality is absent).
    mask: optional per-step observation, mask[m] (N, L_m) bool for any modality whose
    observed steps have gaps (a frame without a face, a silent stretch): steps keep their time
    positions and the gaps are missing, never zeros presented as data. False at every step
    from lengths[m] on. A modality without an entry is observed on its first lengths[m] steps.
    present[m]: (N,) bool, whether modality m exists for the sample at all.
    y: (N,) float32 sentiment label. ids: N sample ids.
    y_m: optional per-modality labels (SIMS ``regression_labels_T/A/V``), each (N,).
    text_ids: optional (N, L_t) int64 token ids with text_ids_mask (N, L_t) bool; text_unk_id:
    the unknown token of their tokenizer (what the missing-data protocols write over a dropped
    token). raw_text: optional N transcripts (a trainable text encoder tokenises them).
    domain: optional (N,) int64 domain index (MIDG).
    prompt_text: optional N cue texts written for the samples by ``msakit prompts`` (MMSLF);
    prompt_ids / prompt_ids_mask: (N, L_p) their token ids, filled by a model that reads them.
    """

    x: dict[str, np.ndarray]
    lengths: dict[str, np.ndarray]
    y: np.ndarray
    ids: list[str]
    present: dict[str, np.ndarray] | None = None
    y_m: dict[str, np.ndarray] | None = None
    text_ids: np.ndarray | None = None
    text_ids_mask: np.ndarray | None = None
    domain: np.ndarray | None = None
    raw_text: list[str] | None = None
    text_unk_id: int | None = None
    prompt_text: list[str] | None = None
    prompt_ids: np.ndarray | None = None
    prompt_ids_mask: np.ndarray | None = None
    mask: dict[str, np.ndarray] | None = None

    def __post_init__(self) -> None:
        try:
            self.y = np.asarray(self.y, dtype=np.float32).reshape(-1)
        except (TypeError, ValueError) as e:
            raise DataError(f"SplitData: labels y must be numbers ({e})") from None
        n = len(self.y)
        self.ids = [str(i) for i in self.ids]
        if len(self.ids) != n:
            raise DataError(f"SplitData: {len(self.ids)} ids for {n} labels")
        if self.present is not None and set(self.present) != set(self.x):
            raise DataError(
                f"SplitData: present has {sorted(self.present)}, x has {sorted(self.x)}")
        for m, arr in self.x.items():
            if m not in self.lengths:
                raise DataError(f"SplitData: x has modality {m!r} but lengths does not")
            arr = np.asarray(arr)
            if arr.ndim != 3 or arr.shape[0] != n:
                raise DataError(f"SplitData: x[{m!r}] must be (N={n}, L, D), got {arr.shape}")
            if arr.dtype.kind not in "biuf":
                raise DataError(f"SplitData: x[{m!r}] must be numeric, got dtype {arr.dtype}")
            self.x[m] = np.ascontiguousarray(arr, dtype=np.float32)
            lens = np.asarray(self.lengths[m])
            whole = lens.dtype.kind in "biu" or lens.dtype.kind == "f" and bool(
                (np.isfinite(lens) & (lens == np.round(lens))).all())
            if lens.shape != (n,) or not whole:
                raise DataError(f"SplitData: lengths[{m!r}] must be (N={n},) integers, got "
                                f"shape {lens.shape} dtype {lens.dtype}")
            lens = lens.astype(np.int64)
            bad = (lens < 0) | (lens > arr.shape[1])
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise DataError(
                    f"SplitData: lengths[{m!r}] must lie in [0, {arr.shape[1]}] (the padded "
                    f"length); {int(bad.sum())} do not, the first is {lens[i]} at index {i} "
                    f"(id {self.ids[i]!r})"
                )
            self.lengths[m] = lens
        if self.mask is not None:
            self.mask = {m: self._step_mask(m, v) for m, v in self.mask.items()}
        if self.present is None:
            self.present = {m: self.observed(m).any(1) for m in self.x}
        self.present = {m: np.asarray(p, dtype=bool).reshape(-1) for m, p in self.present.items()}
        if self.y_m is not None:
            self.y_m = {m: np.asarray(v, dtype=np.float32).reshape(-1) for m, v in self.y_m.items()}
        if self.domain is not None:
            self.domain = np.asarray(self.domain, dtype=np.int64).reshape(-1)
        for name in ("present", "y_m"):
            for m, v in (getattr(self, name) or {}).items():
                if v.shape != (n,):
                    raise DataError(
                        f"SplitData: {name}[{m!r}] must have N={n} entries, got {v.shape}")
        for name in ("text_ids", "text_ids_mask", "domain", "raw_text", "prompt_text",
                     "prompt_ids", "prompt_ids_mask"):
            v = getattr(self, name)
            if v is not None and len(v) != n:
                raise DataError(f"SplitData: {name} must have N={n} rows, got {len(v)}")
        if (self.text_ids is None) != (self.text_ids_mask is None):
            raise DataError("SplitData: text_ids and text_ids_mask come together")
        if (self.prompt_ids is None) != (self.prompt_ids_mask is None):
            raise DataError("SplitData: prompt_ids and prompt_ids_mask come together")

    def _step_mask(self, m: str, v) -> np.ndarray:
        if m not in self.x:
            raise DataError(f"SplitData: mask has modality {m!r}, x has {sorted(self.x)}")
        v = np.asarray(v)
        want = self.x[m].shape[:2]
        if v.shape != want or v.dtype.kind not in "bui":
            raise DataError(f"SplitData: mask[{m!r}] must be (N, L)={want} bool, got shape "
                            f"{v.shape} dtype {v.dtype}")
        v = v.astype(bool)
        late = v & (np.arange(want[1])[None, :] >= self.lengths[m][:, None])
        if late.any():
            i = int(np.flatnonzero(late.any(1))[0])
            raise DataError(f"SplitData: mask[{m!r}] marks steps at or beyond lengths[{m!r}] "
                            f"observed ({int(late.any(1).sum())} samples, the first id "
                            f"{self.ids[i]!r}: length {self.lengths[m][i]})")
        return np.ascontiguousarray(v)

    def observed(self, m: str, idx: np.ndarray | None = None, steps: int | None = None
                 ) -> np.ndarray:
        """(N, L) bool, or rows ``idx`` and the first ``steps`` steps: the steps of m that are
        observed (within the length, marked by ``mask``) in samples where m is present."""
        rows = slice(None) if idx is None else idx
        L = self.x[m].shape[1] if steps is None else steps
        obs = np.arange(L)[None, :] < self.lengths[m][rows][:, None]
        if self.mask is not None and m in self.mask:
            obs &= self.mask[m][rows, :L]
        if self.present is not None:
            obs &= self.present[m][rows][:, None]
        return obs

    def __repr__(self) -> str:
        mods = ", ".join(f"{m} {a.shape[1]}x{a.shape[2]}" for m, a in self.x.items())
        return f"SplitData(n={len(self)}, {mods})"

    def __len__(self) -> int:
        return len(self.y)

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.x)

    @property
    def dims(self) -> dict[str, int]:
        return {m: int(a.shape[2]) for m, a in self.x.items()}

    def subset(self, idx: np.ndarray | list[int]) -> SplitData:
        """Rows ``idx`` as a new SplitData (used to carve validation sets)."""
        idx = np.asarray(idx, dtype=np.int64)

        def take(a):
            return None if a is None else a[idx]

        def take_d(d):
            return None if d is None else {k: v[idx] for k, v in d.items()}

        return SplitData(
            x=take_d(self.x),
            lengths=take_d(self.lengths),
            y=self.y[idx],
            ids=[self.ids[i] for i in idx],
            present=take_d(self.present),
            y_m=take_d(self.y_m),
            text_ids=take(self.text_ids),
            text_ids_mask=take(self.text_ids_mask),
            domain=take(self.domain),
            raw_text=None if self.raw_text is None else [self.raw_text[i] for i in idx],
            text_unk_id=self.text_unk_id,
            prompt_text=None if self.prompt_text is None else [self.prompt_text[i] for i in idx],
            prompt_ids=take(self.prompt_ids),
            prompt_ids_mask=take(self.prompt_ids_mask),
            mask=take_d(self.mask),
        )


@dataclass
class Batch:
    """A minibatch. Shapes: B samples; modality m has L_m steps of D_m features.

    x[m]: (B, L_m, D_m) float; mask[m]: (B, L_m) bool, True where a step is observed;
    present[m]: (B,) bool; y: (B,); ids: list of B strings; index: (B,) row indices in the split.
    A modality that is not present has an all-False mask row. text_ids / text_ids_mask:
    (B, L_t) token ids (see :class:`SplitData`); prompt_ids / prompt_ids_mask: (B, L_p) the
    tokens of each sample's cue text (MMSLF's teacher; never read at evaluation). corruption: what the missing-data protocols
    did (None for data as read); prepared: the model has already encoded and normalised it.
    """

    x: dict[str, torch.Tensor]
    mask: dict[str, torch.Tensor]
    present: dict[str, torch.Tensor]
    y: torch.Tensor
    ids: list[str]
    index: torch.Tensor | None = None
    y_m: dict[str, torch.Tensor] | None = None
    text_ids: torch.Tensor | None = None
    text_ids_mask: torch.Tensor | None = None
    domain: torch.Tensor | None = None
    text_unk_id: int | None = None
    prompt_ids: torch.Tensor | None = None
    prompt_ids_mask: torch.Tensor | None = None
    corruption: Corruption | None = None
    prepared: bool = False

    @property
    def size(self) -> int:
        return int(self.y.shape[0])

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.x)

    def replace(self, **changes: Any) -> Batch:
        return replace(self, **changes)

    def to(self, device: torch.device | str) -> Batch:
        import torch

        def mv(v):
            if isinstance(v, torch.Tensor):
                return v.to(device)
            if isinstance(v, dict):
                return {k: mv(t) for k, t in v.items()}
            if isinstance(v, (Batch, Corruption)):
                return type(v)(**{f.name: mv(getattr(v, f.name)) for f in fields(v)})
            return v

        return mv(self)

    @property
    def clean(self) -> Batch:
        """The batch before any corruption (itself when none was applied). Only a model's
        ``loss`` may read it: evaluation must never see clean data."""
        return self.corruption.clean if self.corruption is not None else self

    def observed(self, m: str) -> torch.Tensor:
        """(B, L_m) bool: steps that are observed and belong to a present modality."""
        return self.mask[m] & self.present[m][:, None]


@dataclass
class Corruption:
    """What the missing-data and noise protocols did to a batch (set by :mod:`msakit.corrupt`).

    clean: the batch before the first protocol (x, mask, present, text ids). missing_rate[m]:
    (B,) realised fraction of the clean valid steps of m no longer observed (1 when dropped
    whole). text_dropped: (B, L_t) bool, token positions written over with the unknown token
    (None without token ids). noise_sigma: std of the Gaussian noise added so far (0 if none).
    """

    clean: Batch
    missing_rate: dict[str, torch.Tensor]
    text_dropped: torch.Tensor | None = None
    noise_sigma: float = 0.0


def lengths_of(obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, L) observed steps -> (N,) lengths (one past the last observed step) and (N,) whether
    the row has missing steps before or between observed ones (it needs ``SplitData.mask``)."""
    steps = np.arange(obs.shape[1])[None, :]
    lens = np.where(obs, steps + 1, 0).max(1, initial=0).astype(np.int64)
    return lens, (obs != (steps < lens[:, None])).any(1)


def collate(split: SplitData, idx: np.ndarray | list[int], trim: bool = True) -> Batch:
    """Gather rows ``idx`` of ``split`` into a Batch; masks are the observed steps
    (:meth:`SplitData.observed`: lengths, per-step mask, present).

    With ``trim``, each modality is cut to the longest sample in the batch.
    """
    import torch

    idx = np.asarray(idx, dtype=np.int64)
    x, mask, present = {}, {}, {}
    for m, arr in split.x.items():
        lens = split.lengths[m][idx]
        L = int(max(1, lens.max())) if trim and len(idx) else arr.shape[1]
        xm = torch.from_numpy(arr[idx, :L])
        mk = torch.from_numpy(split.observed(m, idx, L))
        x[m] = xm * mk[..., None]
        mask[m], present[m] = mk, mk.any(1)
    def tokens(ids, ids_mask):
        if ids is None:
            return None, None
        tm = ids_mask[idx]
        cols = np.flatnonzero(tm.any(0))
        L = int(cols[-1]) + 1 if trim and len(cols) else tm.shape[1]
        return torch.from_numpy(ids[idx, :L]).long(), torch.from_numpy(tm[:, :L]).bool()

    text_ids, text_ids_mask = tokens(split.text_ids, split.text_ids_mask)
    prompt_ids, prompt_ids_mask = tokens(split.prompt_ids, split.prompt_ids_mask)
    return Batch(
        x=x,
        mask=mask,
        present=present,
        y=torch.from_numpy(split.y[idx]),
        ids=[split.ids[i] for i in idx],
        index=torch.from_numpy(idx),
        y_m=None if split.y_m is None else {k: torch.from_numpy(v[idx]) for k, v in split.y_m.items()},
        text_ids=text_ids,
        text_ids_mask=text_ids_mask,
        domain=None if split.domain is None else torch.from_numpy(split.domain[idx]).long(),
        text_unk_id=split.text_unk_id,
        prompt_ids=prompt_ids,
        prompt_ids_mask=prompt_ids_mask,
    )


def parse_modalities(spec: str) -> tuple[str, ...]:
    """'lav' / 'l,a' / 'text,audio' -> ('text', 'audio', 'vision') order-preserving."""
    spec = spec.strip().lower()
    parts = [p for p in spec.replace("+", ",").split(",") if p]
    out: list[str] = []
    for p in parts:
        if p in MODALITIES:
            out.append(p)
        elif all(c in SHORT for c in p):
            out.extend(SHORT[c] for c in p)
        else:
            raise ConfigError(
                f"modality subset {spec!r}: expected letters from 'l','a','v' or names "
                f"{MODALITIES}"
            )
    return tuple(dict.fromkeys(out))


def concat_splits(parts: list[SplitData], domains: list[int] | None = None) -> SplitData:
    """Rows of several splits with the same modalities and dims, one after the other; each
    modality padded to the longest. ``domains[k]`` labels part k's rows in ``domain`` (else the
    parts' own ``domain``). Token ids, transcripts and per-modality labels are kept only when
    every part has them."""
    if not parts:
        raise ConfigError("concat_splits: expected at least one split")
    dims = parts[0].dims
    for p in parts[1:]:
        if p.dims != dims:
            bad = next((m for m in sorted(set(dims) | set(p.dims)) if dims.get(m) != p.dims.get(m)), "?")
            raise ConfigError(
                f"concat_splits: modality {bad!r} differs ({dims.get(bad)} vs {p.dims.get(bad)} "
                f"features); splits join only with the same modalities and feature dims")

    def pad(a: np.ndarray, L: int) -> np.ndarray:
        return a if a.shape[1] == L else np.pad(a, [(0, 0), (0, L - a.shape[1])] + [(0, 0)] * (a.ndim - 2))

    x, mask = {}, {}
    for m in dims:
        L = max(p.x[m].shape[1] for p in parts)
        x[m] = np.concatenate([pad(p.x[m], L) for p in parts])
        if any(p.mask is not None and m in p.mask for p in parts):
            mask[m] = np.concatenate([pad(p.observed(m), L) for p in parts])

    def cat_d(name: str):
        ds = [getattr(p, name) for p in parts]
        return None if any(d is None for d in ds) else {m: np.concatenate([d[m] for d in ds]) for m in ds[0]}

    if domains is not None:
        dom = np.concatenate([np.full(len(p), d, dtype=np.int64) for p, d in zip(parts, domains, strict=True)])
    elif all(p.domain is not None for p in parts):
        dom = np.concatenate([p.domain for p in parts])
    else:
        dom = None
    ids_ok = all(p.text_ids is not None for p in parts) and len({p.text_unk_id for p in parts}) == 1
    text_ids = text_mask = None
    if ids_ok:
        Lt = max(p.text_ids.shape[1] for p in parts)
        text_ids = np.concatenate([pad(p.text_ids, Lt) for p in parts])
        text_mask = np.concatenate([pad(p.text_ids_mask, Lt) for p in parts])
    return SplitData(
        x=x, lengths=cat_d("lengths"), y=np.concatenate([p.y for p in parts]),
        ids=[i for p in parts for i in p.ids], present=cat_d("present"), y_m=cat_d("y_m"),
        text_ids=text_ids, text_ids_mask=text_mask, domain=dom,
        raw_text=None if any(p.raw_text is None for p in parts) else [t for p in parts for t in p.raw_text],
        text_unk_id=parts[0].text_unk_id if ids_ok else None,
        prompt_text=None if any(p.prompt_text is None for p in parts) else [t for p in parts for t in p.prompt_text],
        mask=mask or None,
    )
