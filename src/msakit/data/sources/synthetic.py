"""A synthetic MSA benchmark whose Bayes-optimal prediction is known exactly.

Presets: ``synthetic-tiny`` (unit tests: small dims, a few hundred samples, milliseconds) and
``synthetic-mosi`` (shaped like unaligned CMU-MOSI: text 50x768, audio 375x5, vision 500x20,
1284/229/686 samples, variable true lengths). ``make_synthetic(preset_or_params, seed)`` builds
one; ``load_dataset("synthetic-mosi", seed=..., n=(...))`` does the same through the catalog.

Generative model (all draws from ``numpy.random.default_rng``; one law, many samples)
-------------------------------------------------------------------------------------
Law (fixed by ``law_seed``, shared by every split and every ``seed``)::

    u_m  = g / |g|,  g ~ N(0, I_{D_m})          a unit "sentiment direction" per modality m

Per sample i (independently; each split has its own child stream of ``seed``)::

    y_i  ~ prior: a pmf on the grid {-3, -2.8, ..., 3} (step ``label_step``),
           w(y) ~ sigmoid((prior_edge - |y|) / prior_soft)  (flat in the middle, light tails),
           plus an optional extra mass ``prior_zero`` at exactly 0 (presets: none; 0 then has
           the same weight as its neighbours, ~4% of labels). MOSI-like: mean 0, std ~1.5.
    d_i  ~ LogNormal(log duration_median, duration_sigma)          utterance "duration"
    L_im = clip(round(rate_m * d_i * e_im), min_len_m, max_len_m),  e_im ~ LogNormal(0, 0.1)
    for each step t < L_im of modality m:
        c_imt ~ Bernoulli(p_m)                                      is step t a cue?
        x_imt = c_imt * a_m * y_i * u_m + sigma * n_imt,   n_imt ~ N(0, I_{D_m})
    steps t >= L_im are zero padding (mask False).

So sentiment is carried sparsely (only cue steps), with isotropic noise, mostly by language
(largest p_m * a_m^2 * E[L_m]), partly by audio and vision; all modalities depend on the same
label (cross-modal redundancy). Lengths and presence carry no information about y.

The oracle (``SyntheticOracle``; ``dataset.oracle``)
-------------------------------------------------
Only the projection z_t = u_m . x_t of a step depends on y (noise is isotropic), and per
observed step the likelihood ratio against pure noise is the two-component mixture::

    r_t(y) = (1 - p_m) + p_m * exp( (a_m * y * z_t - a_m^2 * y^2 / 2) / s^2 ),  s^2 = sigma^2

The posterior on the label grid is  post(y) ~ prior(y) * prod_{observed m, t} r_t(y), using
exactly the steps with ``batch.observed(m)`` (mask & present) and nothing else. The oracle
predicts the posterior MEDIAN (the Bayes action for absolute error, i.e. it minimises the
expected MAE); it is used for every metric. The posterior is discrete, so the median is a grid
point; when the CDF is exactly 1/2 between two grid points, their midpoint is used.

It is exact for clean data and for any frame/modality dropping that does not depend on y.
A corruption that adds Gaussian noise makes it mis-specified (it then over-trusts the steps),
unless it is told the noise: if i.i.d. N(0, tau^2) noise per feature is added to observed steps,
``s^2 = sigma^2 + tau^2`` makes it exact again. Pass ``noise_sigma=tau`` (a float, or a dict per
modality) to the call or to :meth:`SyntheticOracle.with_noise`; a protocol may also record it in
``batch.extra["noise_sigma"]``. Any other corruption of content (scaling, shuffling features)
is not modelled.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import torch

from msakit.data.batch import Batch, SplitData
from msakit.data.dataset import SPLITS, MSADataset
from msakit.data.registry import DatasetEntry, register_dataset

__all__ = [
    "PRESETS",
    "ModalityLaw",
    "SyntheticOracle",
    "SyntheticParams",
    "make_synthetic",
]


@dataclass(frozen=True)
class ModalityLaw:
    """How one modality is generated: dim D, length range, steps per unit duration, cue law."""

    dim: int
    max_len: int
    rate: float  # steps per unit of duration before clipping
    p_cue: float  # probability that an observed step carries a cue
    amp: float  # cue strength per label unit along the modality's direction
    min_len: int = 1


@dataclass(frozen=True)
class SyntheticParams:
    """Everything that defines a synthetic dataset except the sampling ``seed``."""

    name: str
    modalities: dict[str, ModalityLaw]
    n: tuple[int, int, int]  # train, valid, test
    sigma: float = 1.0  # std of the isotropic noise on every step
    label_step: float = 0.2
    prior_edge: float = 2.6
    prior_soft: float = 0.3
    prior_zero: float = 0.0
    prior_weights: tuple[float, ...] | None = None  # explicit pmf on the grid (overrides above)
    duration_median: float = 3.0
    duration_sigma: float = 0.6
    length_jitter: float = 0.1
    law_seed: int = 0
    description: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if len(self.n) != 3 or any(int(k) < 1 for k in self.n):
            raise ValueError(f"synthetic {self.name!r}: n must be 3 positive sizes, got {self.n}")
        if not self.modalities:
            raise ValueError(f"synthetic {self.name!r}: modalities must not be empty")
        for m, law in self.modalities.items():
            if m not in ("text", "audio", "vision"):
                raise ValueError(f"synthetic {self.name!r}: unknown modality {m!r}")
            if not (0.0 < law.p_cue <= 1.0):
                raise ValueError(f"synthetic {self.name!r}: {m}.p_cue must be in (0, 1]")
            if not (1 <= law.min_len <= law.max_len) or law.dim < 1:
                raise ValueError(
                    f"synthetic {self.name!r}: {m} needs dim >= 1 and 1 <= min_len <= max_len"
                )
        if self.sigma <= 0:
            raise ValueError(f"synthetic {self.name!r}: sigma must be > 0, got {self.sigma}")
        k = 3.0 / self.label_step
        if self.label_step <= 0 or abs(k - round(k)) > 1e-9:
            raise ValueError(
                f"synthetic {self.name!r}: label_step must divide 3, got {self.label_step}"
            )
        if self.prior_weights is not None and len(self.prior_weights) != len(self.grid()):
            raise ValueError(
                f"synthetic {self.name!r}: prior_weights needs {len(self.grid())} values "
                f"(one per grid point), got {len(self.prior_weights)}"
            )

    def grid(self) -> np.ndarray:
        k = int(round(3.0 / self.label_step))
        return np.linspace(-3.0, 3.0, 2 * k + 1)

    def prior(self) -> np.ndarray:
        """The label pmf on :meth:`grid`."""
        g = self.grid()
        if self.prior_weights is not None:
            w = np.asarray(self.prior_weights, dtype=np.float64)
            if (w < 0).any() or w.sum() <= 0:
                raise ValueError(f"synthetic {self.name!r}: prior_weights must be >= 0, not all 0")
            return w / w.sum()
        w = 1.0 / (1.0 + np.exp((np.abs(g) - self.prior_edge) / self.prior_soft))
        w = w / w.sum() * (1.0 - self.prior_zero)
        w[np.argmin(np.abs(g))] += self.prior_zero
        return w / w.sum()

    def directions(self) -> dict[str, np.ndarray]:
        """The unit direction u_m of each modality (fixed by ``law_seed``)."""
        rng = np.random.default_rng([self.law_seed, 0x5E17])
        out = {}
        for m in ("text", "audio", "vision"):  # fixed order: u_m does not depend on which exist
            law = self.modalities.get(m)
            g = rng.standard_normal(law.dim if law else 1)
            if law is not None:
                out[m] = g / np.linalg.norm(g)
        return out


PRESETS: dict[str, SyntheticParams] = {
    "synthetic-tiny": SyntheticParams(
        name="synthetic-tiny",
        modalities={
            "text": ModalityLaw(dim=16, max_len=12, rate=2.0, p_cue=0.35, amp=1.0, min_len=2),
            "audio": ModalityLaw(dim=4, max_len=20, rate=4.0, p_cue=0.15, amp=0.7, min_len=2),
            "vision": ModalityLaw(dim=6, max_len=24, rate=5.0, p_cue=0.15, amp=0.6, min_len=2),
        },
        n=(240, 60, 120),
        description="tiny synthetic benchmark for unit tests (T 12x16, A 20x4, V 24x6)",
    ),
    "synthetic-mosi": SyntheticParams(
        name="synthetic-mosi",
        modalities={
            "text": ModalityLaw(dim=768, max_len=50, rate=2.8, p_cue=0.35, amp=1.1, min_len=3),
            "audio": ModalityLaw(dim=5, max_len=375, rate=25.0, p_cue=0.04, amp=0.8, min_len=4),
            "vision": ModalityLaw(dim=20, max_len=500, rate=30.0, p_cue=0.04, amp=0.7, min_len=4),
        },
        n=(1284, 229, 686),
        description="synthetic benchmark shaped like unaligned MOSI (T 50x768, A 375x5, V 500x20)",
    ),
}


class SyntheticOracle:
    """Bayes-optimal predictor for a :class:`SyntheticParams` law (see the module docstring).

    ``oracle(batch) -> (B,)`` posterior medians; :meth:`posterior` gives the full (B, G) pmf
    on :attr:`grid`. ``noise_sigma``: std of i.i.d. Gaussian noise known to be added to observed
    steps (float or ``{modality: float}``); ``batch.extra["noise_sigma"]`` overrides it per call.
    """

    def __init__(self, params: SyntheticParams, noise_sigma: float | dict | None = None) -> None:
        self.params = params
        self.grid = params.grid()
        self.log_prior = np.log(np.maximum(params.prior(), 1e-300))
        self.log_prior[params.prior() == 0] = -np.inf
        self.dirs = params.directions()
        self.noise_sigma = noise_sigma

    def with_noise(self, noise_sigma: float | dict | None) -> SyntheticOracle:
        return SyntheticOracle(self.params, noise_sigma)

    def _tau(self, m: str, noise_sigma) -> float:
        if noise_sigma is None:
            return 0.0
        if isinstance(noise_sigma, dict):
            return float(noise_sigma.get(m, 0.0))
        return float(noise_sigma)

    def log_likelihood(self, batch: Batch, noise_sigma=None) -> np.ndarray:
        """(B, G) log prod_t r_t(y) over the observed steps (log-likelihood ratio vs noise)."""
        if noise_sigma is None:
            noise_sigma = batch.extra.get("noise_sigma", self.noise_sigma)
        B = batch.size
        out = np.zeros((B, len(self.grid)))
        for m, law in self.params.modalities.items():
            if m not in batch.x:
                continue
            x = batch.x[m]
            if x.shape[-1] != law.dim:
                raise ValueError(
                    f"oracle of {self.params.name!r}: batch.x[{m!r}] has dim {x.shape[-1]}, "
                    f"the law has {law.dim}"
                )
            obs = _np(batch.observed(m)).astype(bool)  # (B, L)
            if not obs.any():
                continue
            bi, ti = np.nonzero(obs)  # only observed steps are ever read
            zo = _np(x[bi, ti]).astype(np.float64) @ self.dirs[m]  # (k,) projections
            s2 = self.params.sigma**2 + self._tau(m, noise_sigma) ** 2
            ll = _mixture_loglik(zo, self.grid, law.amp, law.p_cue, s2)
            _segment_add(out, bi, ll)
        return out

    def posterior(self, batch: Batch, noise_sigma=None) -> np.ndarray:
        """(B, G) posterior pmf of the label on :attr:`grid`."""
        lp = self.log_prior[None, :] + self.log_likelihood(batch, noise_sigma)
        lp = lp - lp.max(1, keepdims=True)
        p = np.exp(lp)
        return p / p.sum(1, keepdims=True)

    def __call__(self, batch: Batch, noise_sigma=None) -> np.ndarray:
        return posterior_median(self.posterior(batch, noise_sigma), self.grid)


def posterior_median(post: np.ndarray, grid: np.ndarray, tol: float = 1e-9) -> np.ndarray:
    """Median of each row of a (B, G) pmf on ``grid``.

    When the CDF is exactly 1/2 on a stretch (every point between two grid points minimises the
    expected absolute error) the midpoint of that stretch is returned."""
    cdf = np.cumsum(post, axis=1)
    lo = np.argmax(cdf >= 0.5 - tol, axis=1)
    hi = np.argmax(cdf > 0.5 + tol, axis=1)
    hi = np.where(cdf[:, -1] > 0.5 + tol, hi, len(grid) - 1)
    return 0.5 * (grid[lo] + grid[hi]).astype(np.float64)


def _mixture_loglik(z: np.ndarray, grid: np.ndarray, a: float, p: float, s2: float) -> np.ndarray:
    """(k, G) log r(y) = log((1-p) + p exp((a y z - a^2 y^2 / 2) / s2)) for k projections z.

    In-place torch float64 (several times faster than numpy here); exact for any z."""
    zt, g = torch.from_numpy(z), torch.from_numpy(grid)
    e = torch.outer(zt, g * (a / s2))
    e -= (0.5 * a * a / s2) * g * g
    if p >= 1.0:
        return e.numpy()
    if float(e.max()) > 600.0:  # exp would overflow: the slower, always-stable form
        return torch.logaddexp(torch.full_like(e, np.log1p(-p)), e + np.log(p)).numpy()
    return e.exp_().mul_(p).add_(1.0 - p).log_().numpy()


def _segment_add(out: np.ndarray, rows: np.ndarray, vals: np.ndarray) -> None:
    """out[rows[i]] += vals[i] for sorted ``rows`` (from np.nonzero), fast via reduceat."""
    if len(rows) == 0:
        return
    starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
    out[rows[starts]] += np.add.reduceat(vals, starts, axis=0)


def _np(t) -> np.ndarray:
    return t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)


def _gen_split(params: SyntheticParams, ss: np.random.SeedSequence, n: int, tag: str) -> SplitData:
    rng = np.random.default_rng(ss)
    grid, prior = params.grid(), params.prior()
    y = grid[rng.choice(len(grid), size=n, p=prior)]
    dur = np.exp(np.log(params.duration_median) + params.duration_sigma * rng.standard_normal(n))
    dirs = params.directions()
    x, lengths = {}, {}
    for m, law in params.modalities.items():
        jit = np.exp(params.length_jitter * rng.standard_normal(n))
        L = np.clip(np.round(law.rate * dur * jit), law.min_len, law.max_len).astype(np.int64)
        valid = np.arange(law.max_len)[None, :] < L[:, None]  # (n, Lmax)
        xm = np.zeros((n, law.max_len, law.dim), dtype=np.float32)
        k = int(valid.sum())
        steps = rng.standard_normal((k, law.dim), dtype=np.float32)
        if params.sigma != 1.0:
            steps *= np.float32(params.sigma)
        cue = rng.random(k) < law.p_cue
        row = np.nonzero(valid)[0]
        coef = (law.amp * y[row] * cue).astype(np.float32)
        steps += coef[:, None] * dirs[m].astype(np.float32)[None, :]
        xm[valid] = steps
        x[m], lengths[m] = xm, L
    ids = [f"{tag}_{i:05d}" for i in range(n)]
    return SplitData(x=x, lengths=lengths, y=y.astype(np.float32), ids=ids)


def make_synthetic(
    preset_or_params: str | SyntheticParams = "synthetic-tiny", seed: int = 0, **overrides
) -> MSADataset:
    """Generate a synthetic dataset (deterministic in ``seed`` and the params).

    ``overrides`` replace fields of the preset: ``n=(train, valid, test)`` (or a dict with
    those keys), ``sigma``, ``law_seed``, ... and ``modalities`` (merged into the preset's: a dict
    of ModalityLaw fields updates that modality's law, e.g. ``{"text": {"p_cue": 0.5}}``, a
    ModalityLaw replaces it, None drops it).
    """
    if isinstance(preset_or_params, SyntheticParams):
        params = preset_or_params
    elif preset_or_params in PRESETS:
        params = PRESETS[preset_or_params]
    else:
        raise KeyError(
            f"synthetic preset {preset_or_params!r} unknown; presets: {', '.join(PRESETS)}"
        )
    params = _apply_overrides(params, overrides)
    seed = _check_seed(seed)
    root = np.random.SeedSequence([seed, params.law_seed])
    children = root.spawn(len(SPLITS))
    splits = {
        s: _gen_split(params, ss, int(k), f"{params.name}-s{seed}-{s}")
        for s, ss, k in zip(SPLITS, children, params.n, strict=True)
    }
    suffix = "" if seed == 0 and not overrides else f"@seed={seed}" + "".join(
        f",{k}={overrides[k]}" for k in sorted(overrides)
    )
    info = {
        "synthetic": True,
        "preset": params.name,
        "seed": seed,
        "overrides": {k: repr(v) for k, v in overrides.items()},
        "oracle": "Bayes posterior median (minimises expected MAE) given the observed steps",
    }
    return MSADataset(
        name=params.name + suffix,
        splits=splits,
        label_scale="mosi",
        oracle=SyntheticOracle(params),
        info=info,
    )


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"synthetic seed must be a non-negative int, got {seed!r}")
    return int(seed)


def _apply_overrides(params: SyntheticParams, overrides: dict) -> SyntheticParams:
    if not overrides:
        return params
    names = {f.name for f in dataclasses.fields(SyntheticParams)}
    bad = sorted(set(overrides) - names)
    if bad:
        raise TypeError(
            f"synthetic {params.name!r}: unknown option(s) {bad}; expected seed or one of "
            f"{sorted(names - {'name', 'description'})}"
        )
    kw = dict(overrides)
    if "n" in kw:
        n = kw["n"]
        if isinstance(n, dict):
            unknown = sorted(set(n) - set(SPLITS))
            if unknown:
                raise ValueError(f"synthetic n: unknown split(s) {unknown}; expected {SPLITS}")
            n = tuple(int(n.get(s, d)) for s, d in zip(SPLITS, params.n, strict=True))
        kw["n"] = tuple(int(v) for v in n)
    if "modalities" in kw:
        mods = dict(params.modalities)  # merged: unnamed modalities keep the preset's law
        for m, law in kw["modalities"].items():
            if law is None:
                mods.pop(m, None)
            elif isinstance(law, ModalityLaw):
                mods[m] = law
            elif isinstance(law, dict) and m in params.modalities:
                mods[m] = dataclasses.replace(params.modalities[m], **law)
            elif isinstance(law, dict):
                mods[m] = ModalityLaw(**law)
            else:
                raise ValueError(
                    f"synthetic modalities[{m!r}]: expected a ModalityLaw, a dict of its "
                    f"fields, or None (drop it)"
                )
        kw["modalities"] = mods
    return dataclasses.replace(params, **kw)


def _loader_for(preset: str):
    def load(seed: int = 0, **kw) -> MSADataset:
        return make_synthetic(preset, seed=seed, **kw)

    load.__doc__ = f"Generate {preset!r}; keyword options as in :func:`make_synthetic`."
    return load


for _name, _p in PRESETS.items():
    register_dataset(
        DatasetEntry(
            name=_name,
            loader=_loader_for(_name),
            description=_p.description + ", seeded, with a Bayes-optimal oracle",
            source="generated in memory (msakit.data.sources.synthetic)",
            modalities=tuple(_p.modalities),
            synthetic=True,
        )
    )
