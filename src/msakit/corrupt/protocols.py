"""The missing-data and noise protocols (definitions: docs/methods.md, "Missing-data protocols").

=====================  =====================================================================
spec                   what it does
=====================  =====================================================================
``frames:r``           each valid step of each modality is dropped with probability r (LNLN,
                       EMT-DLFR, TFR-Net). Features become zeros; text token ids become the
                       unknown token, [CLS] / [SEP] kept (as LNLN does).
``frames:random``      training schedule of LNLN: per sample and modality r ~ U(0, 1), and with
                       probability 1/2 r = 0 (LNLN resets exactly half of the samples per
                       modality; a per-sample coin keeps the draws independent of the batch).
``modality:mr``        whole modalities are lost at rate mr, never all of a sample's (GCNet,
                       HME): each sample keeps one of its V present modalities chosen at random
                       and drops each other one with probability mr * V / (V - 1), so the
                       expected rate is mr up to its maximum (V - 1) / V (HME's generator
                       behaves the same way: 2/3 is the most with three modalities).
``subset:S``           only the modalities in S are observed (CyIN), S like ``l``, ``av``,
                       ``lav``; ``subset:random`` draws a non-empty subset of each sample's
                       present modalities uniformly (HME's modality-combination sampling).
``noise:sigma``        adds N(0, sigma^2) to every observed feature (masks unchanged).
``domain:A,B->C``      domain generalisation (MIDG): train on the source domains A and B,
                       select on their validation rows, test on the target C. As a batch
                       protocol it keeps the target rows; :meth:`DomainSplit.view` gives the
                       dataset a run trains on (see :class:`DomainSplit`).
``a+b``                chains protocols (``frames:random+modality:0.3``).
=====================  =====================================================================

Text-id options follow the level: ``frames:0.3:unk=100:cls=101:sep=102``. By default the
unknown token is the dataset's (its tokenizer's) and the special tokens are the first and last
valid position of each sentence. The same options are keyword arguments of the classes.

Randomness. Every draw is a function of (seed, sample id, modality, step) only, through a
32-bit integer hash evaluated on int64 tensors (:func:`hash_uniform`): the same sample gets the
same masks whatever batch it is in, in any process, on any machine, on CPU or GPU. ``frames``
drops a step when its uniform ``u < r``, so for a fixed seed the masks at a larger r contain
those at a smaller r; ``modality`` is nested across mr the same way.

Every protocol fills the batch's typed :class:`~msakit.data.batch.Corruption` record: the clean
batch, the realised per-sample ``missing_rate[m]`` (the fraction of the clean valid steps of m
no longer observed; 1 when dropped whole), the token positions written over
(``text_dropped``) and the std of the noise added so far (``noise_sigma``; the synthetic oracle
reads it and stays exact).

:class:`Domain` is the hook for domain-shift protocols (MIDG's ``domain(A->B)``): it resolves
source and target domains against ``batch.domain`` / ``SplitData.domain`` and selects rows; a
later issue subclasses it to train on the source domains and registers it as ``domain``.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Sequence
from dataclasses import fields, replace
from functools import lru_cache

import numpy as np
import torch

from msakit.corrupt.base import PROTOCOLS, Protocol
from msakit.data.batch import MODALITIES, Batch, Corruption, SplitData, parse_modalities
from msakit.data.dataset import MSADataset
from msakit.errors import ConfigError

_M32 = 0xFFFFFFFF
# stream tags keep the draws of different decisions independent of one another
_FRAMES, _RATE, _RESET, _KEEP, _DROP, _SUBSET, _NOISE = range(1, 8)


# --------------------------------------------------------------------------- hashing
def _mul32(x, c: int):
    """``x * c mod 2**32`` for x in [0, 2**32) without overflowing int64 (16-bit halves)."""
    hi, lo = c >> 16, c & 0xFFFF
    return ((((x * hi) & 0xFFFF) << 16) + x * lo) & _M32


def _mix(x):
    """A 32-bit avalanche mix (xor-shift / multiply, "lowbias32" family); works on Python ints
    and on int64 tensors holding values in [0, 2**32)."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x21F0AAAD)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x735A2D97)
    return x ^ (x >> 15)


@lru_cache(maxsize=1 << 17)
def _id_words(sample_id: str) -> tuple[int, int]:
    """Two 32-bit words from a sample id (BLAKE2b, stable across processes and machines)."""
    d = hashlib.blake2b(sample_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(d[:4], "little"), int.from_bytes(d[4:], "little")


def _modality_index(m: str) -> int:
    return MODALITIES.index(m) if m in MODALITIES else zlib.crc32(m.encode()) & _M32


def sample_keys(seed: int, ids: Sequence[str], stream: int, modality: str, device=None) -> torch.Tensor:
    """(B,) int64 hash of (seed, sample id, stream, modality): the root of every draw."""
    s = int(seed) & 0xFFFFFFFFFFFFFFFF
    h = 0x9E3779B9
    for w in (s & _M32, s >> 32, stream, _modality_index(modality)):
        h = _mix(h ^ w)
    words = torch.tensor([_id_words(i) for i in ids], dtype=torch.int64, device=device)
    words = words.reshape(len(ids), 2)
    return _mix(_mix(h ^ words[:, 0]) ^ words[:, 1])


def to_unit(h: torch.Tensor) -> torch.Tensor:
    """32-bit hashes -> float64 uniforms in [0, 1) (exact: h / 2**32)."""
    return h.to(torch.float64) * (1.0 / 4294967296.0)


def hash_uniform(keys: torch.Tensor, n: int | None = None) -> torch.Tensor:
    """Uniforms from (B,) keys: (B,) when ``n`` is None, else (B, n) over positions 0..n-1."""
    if n is None:
        return to_unit(_mix(keys ^ 0x5BD1E995))
    pos = _mix(torch.arange(n, dtype=torch.int64, device=keys.device) + 0x27D4EB2F)
    return to_unit(_mix(keys[:, None] ^ pos[None, :]))


# --------------------------------------------------------------------------- helpers
def _rate(text: str, what: str, lo: float = 0.0, hi: float = 1.0, hi_open: bool = False) -> float:
    try:
        v = float(text)
    except ValueError:
        v = float("nan")
    ok = lo <= v < hi if hi_open else lo <= v <= hi
    if not ok:
        right = ")" if hi_open else "]"
        raise ConfigError(f"{what}: level {text!r} must be a number in [{lo:g}, {hi:g}{right}")
    return v


def _split_options(name: str, level: str, allowed: tuple[str, ...]) -> tuple[str, dict[str, int]]:
    """``"0.3:unk=0:cls=1"`` -> ("0.3", {"unk": 0, "cls": 1})."""
    head, *opts = level.split(":")
    out: dict[str, int] = {}
    for o in opts:
        k, sep, v = o.partition("=")
        if not sep or k not in allowed:
            raise ConfigError(
                f"protocol {name}: option {o!r} not understood; expected KEY=INT with KEY in "
                f"{allowed}, e.g. '{name}:0.3:unk=100'"
            )
        try:
            out[k] = int(v)
        except ValueError:
            raise ConfigError(f"protocol {name}: option {k}={v!r} must be an integer token id") from None
    return head.strip(), out


class MaskProtocol(Protocol):
    """Shared machinery: apply new observed masks, blank dropped content, record rates.

    Token ids: a dropped token becomes the unknown token (``unk_id``, else the batch's
    ``text_unk_id``, else BERT's 100). The special tokens are kept: the first and last valid
    position of each row ([CLS] ... [SEP], <s> ... </s>), or the ids ``cls_id`` / ``sep_id``
    when given. Text features aligned with the ids (same length) keep those positions too."""

    def __init__(self, level: str, unk_id: int | None = None, cls_id: int | None = None,
                 sep_id: int | None = None) -> None:
        head, opts = _split_options(self.name, str(level), ("unk", "cls", "sep"))
        self.unk_id = opts.get("unk", unk_id)
        self.cls_id = opts.get("cls", cls_id)
        self.sep_id = opts.get("sep", sep_id)
        super().__init__(str(level))
        self.value = head

    def special_tokens(self, batch: Batch) -> torch.Tensor:
        """(B, L_t) bool: the positions of ``batch.text_ids`` no protocol drops."""
        ids, valid = batch.text_ids, batch.text_ids_mask
        if self.cls_id is not None or self.sep_id is not None:
            return valid & ((ids == self.cls_id) | (ids == self.sep_id))
        pos = torch.arange(ids.shape[1], device=ids.device)[None, :]
        first = valid.long().argmax(1, keepdim=True)
        last = ids.shape[1] - 1 - valid.flip(1).long().argmax(1, keepdim=True)
        return valid & ((pos == first) | (pos == last))

    def _finish(
        self,
        batch: Batch,
        keep_steps: dict[str, torch.Tensor],
        keep_modality: dict[str, torch.Tensor],
        keep_tokens: torch.Tensor | None = None,
    ) -> Batch:
        """keep_steps[m]: (B, L_m) bool, steps allowed to stay observed (missing = all kept);
        keep_modality[m]: (B,) bool; keep_tokens: (B, L_t) bool for ``batch.text_ids``."""
        special = None
        if batch.text_ids is not None:
            special = self.special_tokens(batch)
            if "text" in keep_steps and keep_steps["text"].shape == special.shape:
                keep_steps = {**keep_steps, "text": keep_steps["text"] | special}
        x, mask, present = dict(batch.x), dict(batch.mask), dict(batch.present)
        for m in batch.modalities:
            mk = batch.observed(m)
            if m in keep_steps:
                mk = mk & keep_steps[m]
            if m in keep_modality:
                mk = mk & keep_modality[m][:, None]
            pres = batch.present[m] & mk.any(1)
            mask[m] = mk & pres[:, None]
            present[m] = pres
            x[m] = batch.x[m] * mask[m].unsqueeze(-1).to(batch.x[m].dtype)
        text_ids, dropped = batch.text_ids, batch.corruption.text_dropped
        if text_ids is not None:
            keep = torch.ones_like(text_ids, dtype=torch.bool) if keep_tokens is None else keep_tokens
            if "text" in keep_modality:
                keep = keep & keep_modality["text"][:, None]
            if "text" in present:  # a text modality now absent keeps no visible token
                keep = keep & present["text"][:, None]
            new = batch.text_ids_mask & ~special & ~keep
            unk = next(u for u in (self.unk_id, batch.text_unk_id, 100) if u is not None)
            text_ids = torch.where(new, torch.full_like(text_ids, unk), text_ids)
            dropped = new if dropped is None else dropped | new
        out = batch.replace(x=x, mask=mask, present=present, text_ids=text_ids)
        return out.replace(corruption=replace(
            batch.corruption, text_dropped=dropped, missing_rate=realised_missing_rate(out)))


def realised_missing_rate(batch: Batch) -> dict[str, torch.Tensor]:
    """Per modality, (B,) fraction of the clean valid steps no longer observed (0 if none)."""
    clean = batch.clean
    out = {}
    for m in batch.modalities:
        c = clean.observed(m).sum(1)
        o = batch.observed(m).sum(1)
        out[m] = torch.where(c > 0, 1.0 - o.float() / c.clamp_min(1).float(), torch.zeros_like(o, dtype=torch.float32))
    return out


def _ordered(batch: Batch) -> list[str]:
    """The batch's modalities in canonical order (text, audio, vision, then others)."""
    return sorted(batch.modalities, key=lambda m: (m not in MODALITIES, _modality_index(m), m))


# --------------------------------------------------------------------------- protocols
@PROTOCOLS.register("frames")
class Frames(MaskProtocol):
    """``frames:r`` / ``frames:random``: random missing time steps (see the module doc)."""

    name = "frames"

    def __init__(self, level: str | float, **ids: int) -> None:
        super().__init__(str(level), **ids)
        self.random = self.value == "random"
        self.r = None if self.random else _rate(self.value, "protocol frames")

    def rates(self, batch: Batch, seed: int, m: str) -> torch.Tensor:
        """(B,) float64 drop rate of modality m for each sample."""
        dev = batch.y.device
        if not self.random:
            return torch.full((batch.size,), self.r, dtype=torch.float64, device=dev)
        r = hash_uniform(sample_keys(seed, batch.ids, _RATE, m, dev))
        reset = hash_uniform(sample_keys(seed, batch.ids, _RESET, m, dev)) < 0.5
        return torch.where(reset, torch.zeros_like(r), r)

    def apply(self, batch: Batch, seed: int) -> Batch:
        dev = batch.y.device
        keep, rates = {}, {}
        for m in batch.modalities:
            rates[m] = self.rates(batch, seed, m)
            keys = sample_keys(seed, batch.ids, _FRAMES, m, dev)
            keep[m] = hash_uniform(keys, batch.x[m].shape[1]) >= rates[m][:, None]
        keep_tok = None
        if batch.text_ids is not None:
            r_t = rates["text"] if "text" in rates else self.rates(batch, seed, "text")
            keys = sample_keys(seed, batch.ids, _FRAMES, "text", dev)
            keep_tok = hash_uniform(keys, batch.text_ids.shape[1]) >= r_t[:, None]
        return self._finish(batch, keep, {}, keep_tok)


@PROTOCOLS.register("modality")
class Modality(MaskProtocol):
    """``modality:mr``: whole modalities missing at rate mr, never all of a sample's."""

    name = "modality"

    def __init__(self, level: str | float, **ids: int) -> None:
        super().__init__(str(level), **ids)
        self.mr = _rate(self.value, "protocol modality", 0.0, 1.0, hi_open=True)

    def apply(self, batch: Batch, seed: int) -> Batch:
        dev = batch.y.device
        mods = _ordered(batch)
        pres = torch.stack([batch.observed(m).any(1) for m in mods], 1)  # (B, M)
        n_present = pres.sum(1)  # V per sample
        # the guaranteed modality: the present one with the largest score
        score = torch.stack([hash_uniform(sample_keys(seed, batch.ids, _KEEP, m, dev)) for m in mods], 1)
        guard = torch.where(pres, score, torch.full_like(score, -1.0)).argmax(1)
        u = torch.stack([hash_uniform(sample_keys(seed, batch.ids, _DROP, m, dev)) for m in mods], 1)
        v = n_present.to(torch.float64)
        p = torch.where(n_present > 1, (self.mr * v / (v - 1).clamp_min(1)).clamp(max=1.0), torch.zeros_like(v))
        drop = (u < p[:, None]) & pres
        drop[torch.arange(batch.size, device=dev), guard] = False
        keep = {m: ~drop[:, i] for i, m in enumerate(mods)}
        return self._finish(batch, {}, keep)


@PROTOCOLS.register("subset")
class Subset(MaskProtocol):
    """``subset:S``: only the modalities in S observed; ``subset:random``: a random non-empty
    subset of each sample's present modalities."""

    name = "subset"

    def __init__(self, level: str, **ids: int) -> None:
        super().__init__(str(level), **ids)
        self.random = self.value == "random"
        if not self.random:
            if not self.value:
                raise ConfigError("protocol subset: level is empty; expected e.g. 'la' or 'random'")
            self.keep = parse_modalities(self.value)

    def apply(self, batch: Batch, seed: int) -> Batch:
        if not self.random:
            unknown = [m for m in self.keep if m not in batch.modalities]
            if unknown:
                raise ConfigError(
                    f"protocol subset:{self.value}: the data has no modality {unknown}; "
                    f"it has {list(batch.modalities)}"
                )
            return self._finish(batch, {}, {
                m: torch.full((batch.size,), m in self.keep, dtype=torch.bool, device=batch.y.device)
                for m in batch.modalities
            })
        dev = batch.y.device
        mods = _ordered(batch)
        pres = torch.stack([batch.observed(m).any(1) for m in mods], 1)  # (B, M)
        n_sub = (1 << pres.sum(1)) - 1  # non-empty subsets per sample
        u = hash_uniform(sample_keys(seed, batch.ids, _SUBSET, "", dev))
        code = (u * n_sub.to(torch.float64)).floor().long() + 1  # uniform in [1, 2^V - 1]
        rank = pres.long().cumsum(1) - 1  # position of each present modality among present
        bit = (code[:, None] >> rank.clamp_min(0)) & 1
        keep_all = pres & bit.bool()
        return self._finish(batch, {}, {m: keep_all[:, i] | ~pres[:, i] for i, m in enumerate(mods)})


@PROTOCOLS.register("noise")
class Noise(MaskProtocol):
    """``noise:sigma``: Gaussian noise (std sigma, in feature units) on observed features."""

    name = "noise"

    def __init__(self, level: str | float, **ids: int) -> None:
        super().__init__(str(level), **ids)
        self.sigma = _rate(self.value, "protocol noise", 0.0, float("inf"))

    def apply(self, batch: Batch, seed: int) -> Batch:
        dev = batch.y.device
        x = dict(batch.x)
        for m in batch.modalities:
            B, L, D = batch.x[m].shape
            if self.sigma == 0 or B * L * D == 0:
                continue
            keys = sample_keys(seed, batch.ids, _NOISE, m, dev)
            step = _mix(keys[:, None] ^ _mix(torch.arange(L, dtype=torch.int64, device=dev) + 0x27D4EB2F))
            feat = _mix(torch.arange(D, dtype=torch.int64, device=dev) + 0x165667B1)
            h1 = _mix(step[:, :, None] ^ feat[None, None, :])  # (B, L, D)
            h2 = _mix(h1 ^ 0x85EBCA6B)
            u1 = (h1.to(torch.float64) + 0.5) * (1.0 / 4294967296.0)  # (0, 1)
            z = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * torch.pi * to_unit(h2))
            obs = batch.observed(m).unsqueeze(-1)
            x[m] = batch.x[m] + (self.sigma * z).to(batch.x[m].dtype) * obs.to(batch.x[m].dtype)
        out = batch.replace(x=x)
        total = float(np.hypot(batch.corruption.noise_sigma, self.sigma))  # variances add
        return out.replace(corruption=replace(
            batch.corruption, noise_sigma=total, missing_rate=realised_missing_rate(out)))


# --------------------------------------------------------------------------- domain hook
def take_rows(batch: Batch, keep: torch.Tensor) -> Batch:
    """The rows of ``batch`` where ``keep`` (B,) is True, every per-sample field included."""
    idx = keep.nonzero().squeeze(1)
    n = batch.size

    def pick(v):
        if isinstance(v, torch.Tensor) and v.dim() >= 1 and v.shape[0] == n:
            return v[idx]
        if isinstance(v, dict):
            return {k: pick(t) for k, t in v.items()}
        if isinstance(v, list) and len(v) == n:
            return [v[i] for i in idx.tolist()]
        if isinstance(v, (Batch, Corruption)):
            return replace(v, **{f.name: pick(getattr(v, f.name)) for f in fields(v)})
        return v

    return pick(batch)


class Domain(Protocol):
    """Base of domain-shift protocols: level ``"A,B->C"`` names source and target domains.

    Domains are the integers in ``batch.domain`` / ``SplitData.domain``, or names resolved
    through ``names`` (a dataset lists them in index order in ``dataset.info["domains"]``).
    ``rows(domain, role)`` selects the samples of the ``"source"`` or ``"target"`` domains;
    ``split(split, role)`` gives those rows of a :class:`SplitData` (train and select on the
    source, test on the target). As a batch protocol it keeps the target rows only: masks and
    content are untouched, so it chains with the missing-data protocols.

    A later issue (MIDG) subclasses this to drive training on the source domains and
    registers it in ``PROTOCOLS`` as ``domain``; this base is not registered itself.
    """

    name = "domain"

    def __init__(self, level: str, names: Sequence[str] | None = None) -> None:
        super().__init__(str(level))
        src, arrow, tgt = str(level).partition("->")
        self.source_spec = [s.strip() for s in src.split(",") if s.strip()]
        self.target_spec = [s.strip() for s in tgt.split(",") if s.strip()]
        if not arrow or not self.source_spec or not self.target_spec:
            raise ConfigError(
                f"protocol domain: level {level!r} must look like 'A->B' or 'A,B->C' "
                f"(source domains -> target domains)"
            )
        overlap = set(self.source_spec) & set(self.target_spec)
        if overlap:
            raise ConfigError(f"protocol domain:{level}: {sorted(overlap)} is both source and target")
        self.names = list(names) if names is not None else None

    def _resolve(self, tokens: list[str]) -> list[int]:
        out = []
        for t in tokens:
            if self.names is not None and t in self.names:
                out.append(self.names.index(t))
            elif t.lstrip("-").isdigit():
                out.append(int(t))
            else:
                known = f"; known domains: {self.names}" if self.names is not None else (
                    "; pass names=dataset.info['domains'] to use names"
                )
                raise ConfigError(f"protocol domain:{self.level}: unknown domain {t!r}{known}")
        return out

    @property
    def source(self) -> list[int]:
        return self._resolve(self.source_spec)

    @property
    def target(self) -> list[int]:
        return self._resolve(self.target_spec)

    def rows(self, domain, role: str = "target"):
        """Bool mask over samples (same type as ``domain``: tensor or array) of ``role``."""
        if role not in ("source", "target"):
            raise ConfigError(f"role must be 'source' or 'target', got {role!r}")
        if domain is None:
            raise ConfigError(
                f"protocol domain:{self.level}: the data carries no domain labels "
                f"(Batch.domain / SplitData.domain is None)"
            )
        wanted = self.source if role == "source" else self.target
        if isinstance(domain, torch.Tensor):
            return torch.isin(domain, torch.tensor(wanted, dtype=domain.dtype, device=domain.device))
        return np.isin(np.asarray(domain), wanted)

    def split(self, split: SplitData, role: str = "target") -> SplitData:
        return split.subset(np.flatnonzero(self.rows(split.domain, role)))

    def apply(self, batch: Batch, seed: int) -> Batch:
        return take_rows(batch, self.rows(batch.domain, "target"))


@PROTOCOLS.register("domain")
class DomainSplit(Domain):
    """``domain:A,B->C``: leave-domains-out training and testing (MIDG's ``domain(A->B)``).

    :meth:`view` turns a dataset with domain labels into the one a run sees: ``train`` and
    ``valid`` are the source domains' train and validation rows (training and checkpoint
    selection), ``test`` the target domains' test rows (out of domain) and ``test_source`` the
    sources' test rows (in domain). The target's train and validation rows are not in it at all,
    so no target data, not even unlabelled, reaches normalisation, training or selection. Domain
    names resolve against ``dataset.info["domains"]``; integers are indices into that list.
    As a batch protocol (``msakit eval --corrupt domain:A->C+modality:0.3``) it keeps the target
    rows and chains with the missing-data protocols."""

    name = "domain"

    def bind(self, dataset: MSADataset) -> DomainSplit:
        """Resolve names against ``dataset.info["domains"]`` and check every named domain has
        rows; raises ConfigError naming what is wrong."""
        names = dataset.info.get("domains")
        if dataset.splits["train"].domain is None:
            raise ConfigError(
                f"protocol domain:{self.level}: dataset {dataset.name!r} has no domain labels "
                f"(SplitData.domain); use a multi-domain dataset such as synthetic-domains")
        self.names = list(names) if names is not None else None
        k = len(self.names) if self.names is not None else None
        for i in self.source + self.target:
            if i < 0 or (k is not None and i >= k):
                raise ConfigError(
                    f"protocol domain:{self.level}: domain index {i} out of range; known domains: "
                    f"{self.names}")
        return self

    def view(self, dataset: MSADataset) -> MSADataset:
        """The dataset a domain run trains, selects and reports on (see the class doc)."""
        self.bind(dataset)
        sp = dataset.splits
        splits = {
            "train": self.split(sp["train"], "source"),
            "valid": self.split(sp["valid"], "source"),
            "test": self.split(sp["test"], "target"),
            "test_source": self.split(sp["test"], "source"),
        }
        for name, role, s in (("train", "source", "train"), ("valid", "source", "valid"),
                              ("test", "target", "test")):
            if len(splits[name]) == 0:
                raise ConfigError(
                    f"protocol domain:{self.level}: the {role} domains have no rows in the {s} "
                    f"split of {dataset.name!r}")
        return MSADataset(
            name=f"{dataset.name}[domain:{self.level}]", splits=splits,
            label_scale=dataset.label_scale, oracle=dataset.oracle,
            info={**dataset.info, "domain_protocol": self.level, "source": self.source,
                  "target": self.target},
            label_range=dataset.label_range, classes=dataset.classes,
            standardized=dataset.standardized,
        )


def split_domain(protocol: Protocol | None) -> tuple[DomainSplit | None, Protocol | None]:
    """A parsed protocol -> (its ``domain:`` part, the rest): ``domain:a->b+frames:0.3`` ->
    (DomainSplit, Frames). At most one domain part is allowed."""
    from msakit.corrupt.base import Chain

    parts = protocol.parts if isinstance(protocol, Chain) else [protocol] if protocol else []
    doms = [p for p in parts if isinstance(p, DomainSplit)]
    if len(doms) > 1:
        raise ConfigError(f"protocol {protocol.spec!r}: at most one domain:... part")
    rest = [p for p in parts if not isinstance(p, DomainSplit)]
    other = None if not rest else rest[0] if len(rest) == 1 else Chain(rest)
    return (doms[0] if doms else None), other


def parse_domain(spec: str) -> DomainSplit:
    """``"A,B->C"`` or ``"domain:A,B->C"`` -> a :class:`DomainSplit` (names unresolved)."""
    spec = str(spec).strip()
    return DomainSplit(spec.split(":", 1)[1] if spec.startswith("domain:") else spec)
