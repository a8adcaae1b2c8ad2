"""A synthetic MSA benchmark whose Bayes-optimal prediction is known exactly.

Presets: ``synthetic-tiny`` (unit tests: small dims, 420 samples, milliseconds) and
``synthetic-mosi`` (shaped like unaligned CMU-MOSI: text 50x768, audio 375x5, vision 500x20,
1284/229/686 samples, variable true lengths). ``make_synthetic(preset_or_params, seed)`` builds
one; ``load_dataset("synthetic-mosi", seed=..., n=(...))`` does the same through the catalog.

Generative model (numpy ``default_rng``; one law, many samples)
--------------------------------------------------------------
Law, fixed by ``law_seed`` and shared by every split and every ``seed``: per modality m an
orthonormal basis B_m (D_m x r_m, uniformly random) whose first column u_m is the modality's
"sentiment direction" (r_m = ``rank``; without a rank only u_m is drawn and the noise is
isotropic).

Per sample i (each split draws from its own child stream of ``seed``)::

    s_i  ~ prior on the latent grid {-3, -2.9, ..., 3}:
           w(s) ~ sigmoid((prior_edge - |s|) / prior_soft)   (flat middle, light tails)
    y_i  = (1/R) sum_{j<R} clip(round(s_i + rater_sigma * e_ij), -3, 3),   e_ij ~ N(0, 1)
           the label: the mean of R = ``raters`` integer ratings, as in MOSI (R = 5, so y is
           on the 0.2 grid, ~4% exactly 0, std ~1.5). R = 0 means y_i = s_i.
    d_i  ~ LogNormal(log duration_median, duration_sigma)       utterance "duration"
    L_im = clip(round(rate_m * d_i * e_im), min_len_m, max_len_m),   e_im ~ LogNormal(0, 0.1)
    for each step t < L_im of modality m:
        c_imt ~ Bernoulli(p_m)                                   does step t carry a cue?
        x_imt = c_imt * a_m * s_i * u_m + sigma * n_imt
        n_imt ~ N(0, floor_m^2 I + (1 - floor_m^2) B_m B_m^T)   (= N(0, I) when isotropic)
    steps t >= L_im are zero padding (mask False).

Sentiment is carried sparsely (only cue steps), under noise, mostly by language (largest
p_m * a_m^2 * E[L_m]), partly by audio and vision; every modality depends on the same s
(cross-modal redundancy). Lengths and presence carry no information about s. In
``synthetic-mosi`` the text noise is anisotropic like pretrained text features (most of its
variance in 8 of 768 dims, std 0.05 elsewhere), which keeps u_text learnable from 1284 samples;
along u_m the noise variance is sigma^2 in every case.

The oracle (``SyntheticOracle``; ``dataset.oracle``)
-------------------------------------------------
Since u_m is an eigenvector of the noise covariance, the projection z_t = u_m . x_t is
sufficient, and per observed step the likelihood ratio against pure noise is the mixture::

    r_t(s) = (1 - p_m) + p_m * exp( (a_m * s * z_t - a_m^2 * s^2 / 2) / sigma^2 )

    post(s) ~ prior(s) * prod_{observed m, t} r_t(s)         on the latent grid
    post(y) = sum_s post(s) * P(y | s)                      P(y | s): the raters' kernel

using exactly the steps with ``batch.observed(m)`` (mask & present) and nothing else. The
oracle predicts the MEDIAN of post(y) (the Bayes action for absolute error: it minimises the
expected MAE); the same prediction is used for every metric. post(y) is discrete, so the median
is a label-grid point; when the CDF is exactly 1/2 between two grid points, their midpoint.

It is exact for clean data and for any frame/modality dropping that does not depend on s.
A corruption that adds Gaussian noise makes it mis-specified (it over-trusts the steps) unless
it is told the noise: for i.i.d. N(0, tau^2) noise per feature added to observed steps, sigma^2
becomes sigma^2 + tau^2 above and it is exact again. Pass ``noise_sigma=tau`` (a float, or a
dict per modality) to the call or to :meth:`SyntheticOracle.with_noise`; a protocol may also
record it in ``batch.corruption.noise_sigma``. Other content corruption is not modelled.

Domains (``synthetic-domains``; ``make_synthetic_domains``)
-----------------------------------------------------------
K laws that share the sentiment directions u_m (``law_seed``) and differ in known ways, each
generating its own train/valid/test rows; the dataset holds them all as named groups
(``SplitData.domain``, names in ``dataset.info["domains"]``, the laws in
``info["domain_laws"]``). Per domain and modality: a feature shift and scale (every observed
step x becomes ``scale * x + shift * v_m``, v_m a unit direction fixed by the domain's
``shift_seed``), a cue strength (``amp``, ``p_cue``); per domain a label prior (``prior_tilt``:
the prior times exp(tilt * s)). The oracle (:class:`DomainOracle`) applies each sample's own
domain law, undoing the affine distortion exactly (z = (u.x - shift u.v) / scale, noise std
tau / scale), so it is Bayes-optimal per domain and "how much of the gap does a method close"
has an exact answer.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field

import numpy as np

from msakit.data.batch import Batch, SplitData, concat_splits
from msakit.data.catalog import register_summary
from msakit.data.dataset import SPLITS, MSADataset
from msakit.data.registry import DatasetEntry, register_dataset

__all__ = [
    "DOMAIN_PRESETS",
    "DomainOracle",
    "PRESETS",
    "ModalityLaw",
    "SyntheticOracle",
    "SyntheticParams",
    "make_synthetic",
    "make_synthetic_domains",
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
    rank: int | None = None  # noise has std sigma on an r-dim subspace holding u (None: all D)
    floor: float = 1.0  # noise std outside that subspace, relative to sigma (<= 1)
    # a domain's affine distortion of every observed step: x -> scale * x + shift * v_m, v_m a
    # unit direction fixed by (law_seed, shift_seed, modality) (synthetic-domains)
    shift: float = 0.0
    scale: float = 1.0


@dataclass(frozen=True)
class SyntheticParams:
    """Everything that defines a synthetic dataset except the sampling ``seed``."""

    name: str
    modalities: dict[str, ModalityLaw]
    n: tuple[int, int, int]  # train, valid, test
    sigma: float = 1.0  # std of the step noise along u (and on the strong-noise subspace)
    latent_step: float = 0.1  # grid of the latent sentiment s
    raters: int = 5  # label = mean of this many integer ratings of s (0: label = s)
    rater_sigma: float = 0.8  # std of one rater's noise before rounding
    prior_edge: float = 2.6
    prior_soft: float = 0.3
    prior_zero: float = 0.0
    prior_weights: tuple[float, ...] | None = None  # explicit pmf on the latent grid
    prior_tilt: float = 0.0  # the prior times exp(prior_tilt * s): a domain's label-prior shift
    duration_median: float = 3.0
    duration_sigma: float = 0.6
    length_jitter: float = 0.1
    law_seed: int = 0
    shift_seed: int = 0  # picks the directions v_m of the modalities' shifts
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
            if law.rank is not None and not (1 <= law.rank <= law.dim):
                raise ValueError(f"synthetic {self.name!r}: {m}.rank must be in [1, dim]")
            if not (0.0 <= law.floor <= 1.0):
                raise ValueError(f"synthetic {self.name!r}: {m}.floor must be in [0, 1]")
            if not (law.scale > 0 and np.isfinite(law.scale) and np.isfinite(law.shift)):
                raise ValueError(f"synthetic {self.name!r}: {m}.scale must be > 0 and shift finite")
            if not (1 <= law.min_len <= law.max_len) or law.dim < 1:
                raise ValueError(
                    f"synthetic {self.name!r}: {m} needs dim >= 1 and 1 <= min_len <= max_len"
                )
        if self.sigma <= 0:
            raise ValueError(f"synthetic {self.name!r}: sigma must be > 0, got {self.sigma}")
        k = 3.0 / self.latent_step if self.latent_step > 0 else 0.5
        if abs(k - round(k)) > 1e-9:
            raise ValueError(
                f"synthetic {self.name!r}: latent_step must divide 3, got {self.latent_step}"
            )
        if self.raters < 0 or (self.raters > 0 and self.rater_sigma <= 0):
            raise ValueError(
                f"synthetic {self.name!r}: raters must be >= 0 and rater_sigma > 0, got "
                f"{self.raters}, {self.rater_sigma}"
            )
        if self.prior_weights is not None and len(self.prior_weights) != len(self.latent_grid()):
            raise ValueError(
                f"synthetic {self.name!r}: prior_weights needs {len(self.latent_grid())} values "
                f"(one per latent grid point), got {len(self.prior_weights)}"
            )

    def latent_grid(self) -> np.ndarray:
        """The support of the latent sentiment s: -3, -3 + latent_step, ..., 3."""
        k = int(round(3.0 / self.latent_step))
        return np.linspace(-3.0, 3.0, 2 * k + 1)

    def label_grid(self) -> np.ndarray:
        """The support of the label y: multiples of 1/raters in [-3, 3] (the latent grid when
        raters is 0)."""
        if self.raters == 0:
            return self.latent_grid()
        return np.arange(-3 * self.raters, 3 * self.raters + 1) / self.raters

    def label_kernel(self) -> np.ndarray:
        """(S, Y) matrix P(y | s): the mean of ``raters`` i.i.d. ratings
        clip(round(s + rater_sigma * e), -3, 3), e ~ N(0, 1); the identity when raters is 0."""
        s = self.latent_grid()
        if self.raters == 0:
            return np.eye(len(s))
        from scipy.special import ndtr

        edges = np.array([-np.inf, -2.5, -1.5, -0.5, 0.5, 1.5, 2.5, np.inf])
        cdf = ndtr((edges[None, :] - s[:, None]) / self.rater_sigma)
        one = np.diff(cdf, axis=1)  # (S, 7): P(rating = k | s), k = -3..3
        out = one
        for _ in range(self.raters - 1):  # distribution of the sum of the ratings
            out = np.stack([np.convolve(a, b) for a, b in zip(out, one, strict=True)])
        return out / out.sum(1, keepdims=True)

    def prior(self) -> np.ndarray:
        """The pmf of the latent sentiment s on :meth:`latent_grid`."""
        g = self.latent_grid()
        if self.prior_weights is not None:
            w = np.asarray(self.prior_weights, dtype=np.float64)
            if (w < 0).any() or w.sum() <= 0:
                raise ValueError(f"synthetic {self.name!r}: prior_weights must be >= 0, not all 0")
            return self._tilt(w / w.sum())
        w = 1.0 / (1.0 + np.exp((np.abs(g) - self.prior_edge) / self.prior_soft))
        w = w / w.sum() * (1.0 - self.prior_zero)
        w[np.argmin(np.abs(g))] += self.prior_zero
        return self._tilt(w / w.sum())

    def _tilt(self, w: np.ndarray) -> np.ndarray:
        if not self.prior_tilt:
            return w
        w = w * np.exp(self.prior_tilt * self.latent_grid())
        return w / w.sum()

    def shift_directions(self) -> dict[str, np.ndarray]:
        """The unit direction v_m of each modality's shift (fixed by law_seed, shift_seed)."""
        order = ("text", "audio", "vision")
        out = {}
        for m, law in self.modalities.items():
            rng = np.random.default_rng([self.law_seed, 0x5F1F7, self.shift_seed, order.index(m)])
            v = rng.standard_normal(law.dim)
            out[m] = v / np.linalg.norm(v)
        return out

    def directions(self) -> dict[str, np.ndarray]:
        """The unit direction u_m of each modality (fixed by ``law_seed``)."""
        return {m: b[:, 0].copy() for m, b in self.bases().items()}

    def bases(self) -> dict[str, np.ndarray]:
        """Per modality an orthonormal (D_m, r_m) basis of its strong-noise subspace, column 0
        being u_m (just u_m, (D_m, 1), when ``rank`` is None). Fixed by ``law_seed``."""
        order = ("text", "audio", "vision")  # u_m does not depend on which others exist
        return {
            m: _basis(self.law_seed, order.index(m), law.dim, law.rank or 1)
            for m, law in self.modalities.items()
        }


@functools.lru_cache(maxsize=32)
def _basis(law_seed: int, which: int, dim: int, rank: int) -> np.ndarray:
    rng = np.random.default_rng([law_seed, 0x5E17, which])
    q, r = np.linalg.qr(rng.standard_normal((dim, rank)))
    q = q * np.sign(np.diag(r))[None, :]  # a uniformly random orthonormal basis
    q.setflags(write=False)
    return q


PRESETS: dict[str, SyntheticParams] = {
    "synthetic-tiny": SyntheticParams(
        name="synthetic-tiny",
        modalities={
            "text": ModalityLaw(dim=16, max_len=12, rate=2.0, p_cue=0.45, amp=1.0, min_len=2),
            "audio": ModalityLaw(dim=4, max_len=20, rate=4.0, p_cue=0.3, amp=0.5, min_len=2),
            "vision": ModalityLaw(dim=6, max_len=24, rate=5.0, p_cue=0.3, amp=0.45, min_len=2),
        },
        n=(240, 60, 120),
        description="tiny synthetic benchmark for unit tests (T 12x16, A 20x4, V 24x6)",
    ),
    "synthetic-mosi": SyntheticParams(
        name="synthetic-mosi",
        modalities={
            "text": ModalityLaw(
                dim=768, max_len=50, rate=2.8, p_cue=0.45, amp=1.0, min_len=3, rank=8, floor=0.05
            ),
            "audio": ModalityLaw(dim=5, max_len=375, rate=25.0, p_cue=0.15, amp=0.33, min_len=4),
            "vision": ModalityLaw(dim=20, max_len=500, rate=30.0, p_cue=0.15, amp=0.29, min_len=4),
        },
        n=(1284, 229, 686),
        description="synthetic benchmark shaped like unaligned MOSI (T 50x768, A 375x5, V 500x20)",
    ),
}


# synthetic-domains: three recording conditions on synthetic-tiny's shapes (ours)
DOMAIN_PRESETS: dict[str, dict] = {
    # the reference condition: synthetic-tiny's law
    "studio": {},
    # noisy, loud audio (shifted and amplified), weaker vision cues, more positive labels
    "phone": dict(modalities={"audio": {"shift": 2.0, "scale": 2.0},
                              "vision": {"amp": 0.25}},
                  prior_tilt=0.3, shift_seed=1),
    # sparser text cues, dim and shifted video, stronger audio, more negative labels
    "webcam": dict(modalities={"text": {"p_cue": 0.3}, "audio": {"amp": 0.7},
                               "vision": {"shift": 1.5, "scale": 0.6}},
                   prior_tilt=-0.3, shift_seed=2),
}


class SyntheticOracle:
    """Bayes-optimal predictor for a :class:`SyntheticParams` law (see the module docstring).

    ``oracle(batch) -> (B,)`` label-posterior medians; :meth:`posterior` gives the (B, Y) pmf
    of the label on :attr:`grid`, :meth:`latent_posterior` the (B, S) pmf of s on
    :attr:`latent_grid`. ``noise_sigma``: std of i.i.d. Gaussian noise known to be added to
    observed steps (float or ``{modality: float}``); ``batch.corruption.noise_sigma``, when not 0,
    takes precedence over the constructor's value; an explicit call argument over both.
    """

    def __init__(self, params: SyntheticParams, noise_sigma: float | dict | None = None) -> None:
        self.params = params
        self.latent_grid = params.latent_grid()
        self.grid = params.label_grid()
        self.kernel = params.label_kernel()
        prior = params.prior()
        self.log_prior = np.where(prior > 0, np.log(np.maximum(prior, 1e-300)), -np.inf)
        self.dirs = params.directions()
        self.shifts = params.shift_directions()
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
        """(B, S) log prod_t r_t(s) on the latent grid over the observed steps (the
        log-likelihood ratio against pure noise; 0 for a sample with nothing observed)."""
        if noise_sigma is None:
            rec = batch.corruption.noise_sigma if batch.corruption is not None else 0.0
            noise_sigma = rec if rec else self.noise_sigma
        B = batch.size
        out = np.zeros((B, len(self.latent_grid)))
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
            if law.shift or law.scale != 1.0:  # undo the domain's x -> scale * x + shift * v
                zo = (zo - law.shift * float(self.shifts[m] @ self.dirs[m])) / law.scale
            s2 = self.params.sigma**2 + (self._tau(m, noise_sigma) / law.scale) ** 2
            ll = _mixture_loglik(zo, self.latent_grid, law.amp, law.p_cue, s2)
            _segment_add(out, bi, ll)
        return out

    def latent_posterior(self, batch: Batch, noise_sigma=None) -> np.ndarray:
        """(B, S) posterior pmf of the latent sentiment on :attr:`latent_grid`."""
        lp = self.log_prior[None, :] + self.log_likelihood(batch, noise_sigma)
        lp = lp - lp.max(1, keepdims=True)
        p = np.exp(lp)
        return p / p.sum(1, keepdims=True)

    def posterior(self, batch: Batch, noise_sigma=None) -> np.ndarray:
        """(B, Y) posterior pmf of the label on :attr:`grid` (latent posterior @ kernel)."""
        return self.latent_posterior(batch, noise_sigma) @ self.kernel

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
    import torch

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
    import torch

    return t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)


def _gen_split(params: SyntheticParams, ss: np.random.SeedSequence, n: int, tag: str) -> SplitData:
    rng = np.random.default_rng(ss)
    grid, prior = params.latent_grid(), params.prior()
    s = grid[rng.choice(len(grid), size=n, p=prior)]  # latent sentiment
    if params.raters:
        e = rng.standard_normal((n, params.raters))
        ratings = np.clip(np.rint(s[:, None] + params.rater_sigma * e), -3, 3)
        y = np.round(ratings.sum(1)) / params.raters
    else:
        y = s
    dur = np.exp(np.log(params.duration_median) + params.duration_sigma * rng.standard_normal(n))
    bases = params.bases()
    x, lengths = {}, {}
    for m, law in params.modalities.items():
        jit = np.exp(params.length_jitter * rng.standard_normal(n))
        L = np.clip(np.round(law.rate * dur * jit), law.min_len, law.max_len).astype(np.int64)
        valid = np.arange(law.max_len)[None, :] < L[:, None]  # (n, Lmax)
        xm = np.zeros((n, law.max_len, law.dim), dtype=np.float32)
        k = int(valid.sum())
        steps = rng.standard_normal((k, law.dim), dtype=np.float32)
        B = bases[m].astype(np.float32)
        if law.rank is not None and law.rank < law.dim and law.floor < 1.0:
            # std floor*sigma everywhere, topped up to sigma inside span(B)
            steps *= np.float32(law.floor)
            extra = rng.standard_normal((k, law.rank), dtype=np.float32)
            steps += np.float32(np.sqrt(1.0 - law.floor**2)) * (extra @ B.T)
        if params.sigma != 1.0:
            steps *= np.float32(params.sigma)
        cue = rng.random(k) < law.p_cue
        row = np.nonzero(valid)[0]
        coef = (law.amp * s[row] * cue).astype(np.float32)
        steps += coef[:, None] * B[:, 0][None, :]
        if law.scale != 1.0:
            steps *= np.float32(law.scale)
        if law.shift:
            steps += np.float32(law.shift) * params.shift_directions()[m].astype(np.float32)
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


class DomainOracle:
    """The Bayes-optimal prediction of each sample under its own domain's law: ``oracles[d]``
    for the rows whose ``batch.domain`` is d (see the module docstring)."""

    def __init__(self, oracles: list[SyntheticOracle], names: list[str]) -> None:
        self.oracles, self.names = list(oracles), list(names)

    def __call__(self, batch: Batch, noise_sigma=None) -> np.ndarray:
        if batch.domain is None:
            raise ValueError("DomainOracle: the batch carries no domain labels (batch.domain)")
        dom = _np(batch.domain).astype(np.int64)
        out = np.zeros(batch.size, dtype=np.float64)
        for d in np.unique(dom):
            rows = dom == d
            out[rows] = self.oracles[int(d)](batch, noise_sigma)[rows]
        return out


def make_synthetic_domains(
    seed: int = 0, domains: dict[str, dict] | None = None, base: str = "synthetic-tiny",
    **overrides,
) -> MSADataset:
    """``synthetic-domains``: one synthetic law per domain (``DOMAIN_PRESETS`` by default: each
    entry holds overrides of the ``base`` preset as :func:`make_synthetic` takes them), every
    domain's rows in every split, labelled by ``SplitData.domain``. ``overrides`` apply to every
    domain (e.g. ``n=(120, 30, 60)``, per domain)."""
    seed = _check_seed(seed)
    domains = DOMAIN_PRESETS if domains is None else domains
    if not domains:
        raise ValueError("synthetic-domains: domains must not be empty")
    laws, parts = [], {s: [] for s in SPLITS}
    for k, (dname, dover) in enumerate(domains.items()):
        dover = dict(dover)
        mods = {**{m: dict(v) for m, v in (overrides.get("modalities") or {}).items()}}
        for m, v in (dover.pop("modalities", None) or {}).items():
            mods[m] = {**mods.get(m, {}), **v}
        kw = {**{k2: v for k2, v in overrides.items() if k2 != "modalities"}, **dover}
        if mods:
            kw["modalities"] = mods
        params = _apply_overrides(dataclasses.replace(PRESETS[base], name=f"synthetic-domains/{dname}"), kw)
        laws.append(params)
        root = np.random.SeedSequence([seed, params.law_seed, 0xD0, k])
        for s, ss, n in zip(SPLITS, root.spawn(len(SPLITS)), params.n, strict=True):
            parts[s].append(_gen_split(params, ss, int(n), f"synthetic-domains-s{seed}-{dname}-{s}"))
    names = list(domains)
    splits = {s: concat_splits(p, domains=list(range(len(p)))) for s, p in parts.items()}
    default = domains is DOMAIN_PRESETS and base == "synthetic-tiny"
    suffix = "" if seed == 0 and not overrides and default else f"@seed={seed}" + "".join(
        f",{k}={overrides[k]}" for k in sorted(overrides)) + ("" if default else f",domains={names}")
    info = {
        "synthetic": True,
        "preset": "synthetic-domains",
        "seed": seed,
        "domains": names,
        "domain_laws": {n: repr(v) for n, v in domains.items()},
        "overrides": {k: repr(v) for k, v in overrides.items()},
        "oracle": "Bayes posterior median under each sample's own domain law",
    }
    return MSADataset(
        name="synthetic-domains" + suffix,
        splits=splits,
        label_scale="mosi",
        oracle=DomainOracle([SyntheticOracle(p) for p in laws], names),
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
    register_summary(
        _name,
        lambda root, p=_p: {
            "dims": {m: law.dim for m, law in p.modalities.items()},
            "sizes": dict(zip(("train", "valid", "test"), p.n, strict=True)),
        },
    )


register_dataset(
    DatasetEntry(
        name="synthetic-domains",
        loader=make_synthetic_domains,
        description=(
            f"{len(DOMAIN_PRESETS)} synthetic domains ({', '.join(DOMAIN_PRESETS)}) on "
            f"synthetic-tiny's shapes: known shifts in features, cue strength and label prior; "
            f"a per-domain Bayes-optimal oracle (domain:A,B->C protocols)"
        ),
        source="generated in memory (msakit.data.sources.synthetic)",
        modalities=tuple(PRESETS["synthetic-tiny"].modalities),
        synthetic=True,
    )
)
register_summary(
    "synthetic-domains",
    lambda root, p=PRESETS["synthetic-tiny"]: {
        "dims": {m: law.dim for m, law in p.modalities.items()},
        "sizes": {s: k * len(DOMAIN_PRESETS) for s, k in zip(("train", "valid", "test"), p.n, strict=True)},
    },
)
