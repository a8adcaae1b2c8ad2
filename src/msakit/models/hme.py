"""HME: Hyper-Modality Enhancement for multimodal sentiment analysis with missing modalities.

Zhuang et al., "Hyper-Modality Enhancement for Multimodal Sentiment Analysis with Missing
Modalities", NeurIPS 2025. Reference code: github.com/YetZzzzzz/HME (read, not copied).

Blocks, in forward order (M modalities, d the model width):

1. Encoding. Per modality a kernel-1 Conv1d projection without bias to d (reference), sinusoidal
   positions, a masked pre-norm transformer (no dropout on attention weights: ours) and max
   pooling over the observed steps (reference). A modality that is absent for a sample (no
   observed step, from ``batch.observed``) gets a learned "missing" vector instead; its masked
   content is never read.
2. Cross-sample enhancement. Each observed modality's pooled vector queries a MEMORY BANK of
   training-set representations of the same modality with one batched k-NN search (cosine,
   ``layers.retrieval``; exact torch matmul + topk, an ANN index can plug in). Neighbours with
   cosine >= ``sim_threshold`` (0.6, reference) are kept. The reference retrieves within the
   current batch and a per-modality latent (Perceiver-style) transformer (``num_latents`` 5,
   depth 2: reference) reads their mean; here it reads the set [own pooled vector; own
   observed steps; top-k neighbours] (ours), so the mean is one thing it can learn, and a
   sample without neighbours above the threshold still has its own input (reference: the
   batch mean).
   The bank holds one detached entry per training sample (pooled vectors of its observed
   modalities, with per-entry presence and the sample's row id). In training, each forward
   first retrieves (never the sample's own entry) and then writes the batch into the bank: a
   sample seen again replaces its entry, new ones go to a FIFO of ``bank_size`` slots.
   ``on_fit_end`` refills the bank from the whole clean training split with the final weights.
   The bank lives in buffers, so it is saved in ``model.pt`` and restored by
   ``load_state_dict`` (which resizes the buffers to the saved bank). In evaluation nothing is
   written: a sample's prediction depends on its own input and the bank only, never on which
   other samples share its batch (the reference's within-batch retrieval does).
3. Hyper-modalities. A sample latent transformer reads the M pooled vectors (+ learned modality
   embeddings: ours) into summary latents. For each ordered pair (m, n) a cross-attention
   encoder lets m's enhanced latents query n's; a hyper encoder then lets the summary latents
   query m's pairwise results, averaged into the hyper-modality of m (depth 2: reference).
4. Uncertainty-aware fusion. A variational bottleneck per hyper-modality (MLP d-2d-2d-2d, as
   the reference) gives (mu, sigma = softplus(s - 5) + 1e-4), a sample z (mu in evaluation), a
   unimodal prediction and a KL term to N(0, I). The original vector of m and z_m are fused
   with attention logits from an MLP plus log w, w = clamp(1 / mean sigma_m, 0.2, 1.0) (bounds:
   reference); the reference multiplies the logit by w instead, which is not monotone in w for
   negative logits (ours). An absent modality's original vector gets no weight (ours). The M
   z's are fused with logits plus log of the normalised precisions 1/sigma (reference: a
   softmax of the raw precisions multiplied into the logits). The M fused originals and the
   fused hyper-modality pass a 2-layer transformer (reference; pre-norm, feed-forward 2d: ours)
   and an MLP (M+1)d-2d-1 (reference).
   ``Output.extras["uncertainty"]`` (B,) is the mean sigma over hyper-modalities and latent
   dims (positive; a latent spread, not a calibrated error bar); ``extras["sigma"]`` (B, M).

Classification (``n_classes = K``): the final MLP and the per-modality VIB decoders output K
logits, and the L1 terms below become cross-entropy (``MSAModel.regression_loss``).

Loss: L1(pred) + 0.8 * mean_m L1(pred_m) + 0.01 * mean_m KL (reference), named ``pred``,
``unimodal``, ``kl`` and ``total``. Optimiser: AdamW, weight decay 5e-4 except on biases and
norms, gradient clipping 0.8 (reference; note the engine clips the gradient norm, the reference
clips values). Training corruption ``modality:0.3`` (the paper's ``modality(mr)``).

Ours, not the reference's: d=96 (the reference script's default; 192 is cited for the paper's
runs), 4 heads (16), 2 encoder layers (3) with feed-forward 2d, feed-forward 2d in the latent
blocks (GEGLU 4d), dropout 0.1 everywhere, k=8 neighbours, sequences longer than
``max_steps`` = 64 averaged into 64 windows per sample (``window_mean``; unaligned MOSI audio
375 / vision 500 steps would otherwise dominate the cost), text as precomputed features (the
reference fine-tunes BERT), batch 32 (256), lr 3e-4 instead of 2e-5, chosen on validation MAE
only (``benchmarks/select_hme_lr.py``: synthetic-tiny, default config and training corruption,
10 epochs with checkpoint selection on validation, seeds 1 and 2; validation MAE mean ± std
over seeds 0.869 ± 0.173 at 2e-5, 0.669 ± 0.055 at 1e-4, 0.648 ± 0.018 at 3e-4, 0.679 ±
0.003 at 1e-3; the test split played no part), the latent transformers
and pairwise encoders working on latent token sets rather than on single pooled vectors (with
one key, the reference's cross-attention reduces to a linear map of that key).

Measured (synthetic-tiny, ``modality:0.3`` training, 15 epochs, seeds 1-3, clean test): test MAE
0.703 with retrieval, 0.677 with it disabled (``sim_threshold=1.01``), oracle 0.577; the
neighbours are relevant (the mean label of a test sample's 8 text neighbours correlates 0.84
with its label) but add nothing the sample's own features do not already carry there.

``--preset paper`` (``HMEConfig.PRESETS``: the README's MOSI command over the script's
defaults; 44.09M parameters, the reference's count plus msakit's missing vectors, modality
embeddings and final LayerNorm, 1,536) against the default (3.66M):

| field | paper (reference) | default (ours) |
|---|---|---|
| d, heads | 192, 16 | 96, 4 |
| enc_layers, latent_depth, hyper_depth | 4, 4, 3 | 2, 2, 2 |
| step encoders' feed-forward | 4d ReLU | 2d GELU |
| latent / pair blocks (``latent_act``) | GEGLU 4d, bias-free q/k/v | GELU 2d |
| fusion_ff | 2048 | 2d |
| max_steps | 512 (every step) | 64 windows |
| enhance | neighbours only | own input + neighbours |
| lr, text_lr, weight decay | 2e-5, 2e-5, 1e-4 (``--wd`` wins in the script) | 3e-4, 2e-5, 5e-4 |
| batch, epochs, patience | 256, 100, 10 | 32, 30, 8 |
| gradient clipping | 0.8 by value | 0.8 by norm |
| training corruption | ``modality:0.2`` | ``modality:0.3`` (the paper's protocol range) |

Not matched by either: the reference's dropout rates per block (attention 0.5, feed-forward
and residual 0.3, embedding 0.2, fusion 0.1; msakit one rate, 0.1), retrieval within the
batch (msakit: the bank, so predictions do not depend on batch mates), an optimiser rebuilt
every epoch. ``--set retrieval=none`` switches cross-sample enhancement off (no bank) for the
ablation.

Text path of the reported numbers: precomputed text features (``text_encoder=features``,
the default) everywhere in BENCHMARKS.md; ``--set text_encoder=NAME`` fine-tunes a pretrained
encoder on the transcripts instead (models/layers/text.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from msakit.data.batch import Batch
from msakit.errors import ConfigError
from msakit.models.base import ModelConfig, MSAModel, Output, register_model
from msakit.models.layers import (
    AttentionBlock,
    AttentionEncoder,
    PositionalEncoding,
    mlp,
    window_mean,
)
from msakit.models.layers.attention import attention_mask
from msakit.models.layers.retrieval import RETRIEVERS, Retriever, make_retriever

_BANK = ("bank_x", "bank_present", "bank_ids", "bank_ptr")


@dataclass
class HMEConfig(ModelConfig):
    d: int = 96
    heads: int = 4
    enc_layers: int = 2
    enc_ff: int = 2  # step encoders' feed-forward width, in multiples of d
    enc_act: str = "gelu"
    # latent, pairwise and hyper blocks: "gelu" (feed-forward 2d; ours) or "geglu" (GEGLU 4d,
    # bias-free query/key/value projections; the reference)
    latent_act: str = "gelu"
    fusion_ff: int | None = None  # the final fusion transformer's feed-forward width; None: 2d
    kernel_size: int = 1
    max_steps: int = 64  # longer sequences are averaged into this many windows per sample
    pool: str = "max"  # "max" (reference) or "mean" over observed steps
    num_latents: int = 5
    latent_depth: int = 2
    hyper_depth: int = 2
    # cross-sample enhancement: "bank" retrieves neighbours from the memory bank, "none"
    # switches retrieval off (no bank: the ablation)
    retrieval: str = "bank"
    # what the enhanced branch reads: "own" = [own pooled vector; own observed steps;
    # neighbours] (ours), "neighbours" = the retrieved neighbours only (paper, reference)
    enhance: str = "own"
    k: int = 8  # neighbours retrieved per observed modality
    sim_threshold: float = 0.6  # cosine; neighbours below it are ignored
    bank_size: int = 4096  # FIFO slots during training; on_fit_end resizes to the train split
    retriever: str = "exact"  # a name registered in msakit.models.layers.retrieval
    dropout: float = 0.1
    weight_lb: float = 0.2
    weight_ub: float = 1.0
    w_unimodal: float = 0.8
    w_kl: float = 0.01
    lr: float = 3e-4
    weight_decay: float = 5e-4
    grad_clip: float = 0.8
    batch_size: int = 32
    default_corrupt: str | None = "modality:0.3"

    # YetZzzzzz/HME @ 6f0c9a7: the MOSI command of README.md:29 over the defaults of
    # HME_main.py (file:line of that repository)
    PRESETS: ClassVar[dict[str, dict]] = {"paper": {
        "d": 192, "enc_layers": 4, "hyper_depth": 3, "latent_depth": 4,  # README.md:29
        "heads": 16, "num_latents": 5,  # HME_main.py:330, 354
        "enc_ff": 4, "enc_act": "relu",  # the MulT-style encoders: feed-forward 4d, ReLU
        "latent_act": "geglu",  # model_utils.py: GEGLU 4d, bias-free q/k/v (latent, pair blocks)
        "fusion_ff": 2048,  # HME_model.py:277-278: nn.TransformerEncoderLayer(192, 16)
        "max_steps": 512,  # reads every step (aligned MOSI, 50; HME_main.py:346-347)
        "enhance": "neighbours", "retrieval": "bank", "sim_threshold": 0.6,  # HME_main.py:315
        "weight_lb": 0.2, "weight_ub": 1.0,  # HME_main.py:360-363
        "w_unimodal": 0.8, "w_kl": 0.01, "loss": "l1",  # HME_main.py:451-454
        "optimizer": "adamw", "lr": 2e-5, "text_lr": 2e-5,  # HME_main.py:324, 411-417
        "weight_decay": 1e-4,  # HME_main.py:335-337 (--wd wins over --weight_decay 5e-4)
        "batch_size": 256, "epochs": 100, "patience": 10,  # HME_main.py:307, README, :615-665
        "grad_clip": 0.8, "grad_clip_mode": "value",  # HME_main.py:366, 459
        "default_corrupt": "modality:0.2",  # README.md:29 --missing_rate=0.2
    }}
    # retriever names are checked in check(): plug-ins may register more at run time
    CHOICES: ClassVar[dict[str, tuple]] = {
        **ModelConfig.CHOICES, "pool": ("max", "mean"), "retrieval": ("bank", "none"),
        "enhance": ("own", "neighbours"), "enc_act": ("gelu", "relu"),
        "latent_act": ("gelu", "geglu"),
    }

    def check(self) -> None:
        for k in ("pool", "retrieval", "enhance", "enc_act", "latent_act"):  # built directly too
            if getattr(self, k) not in self.CHOICES[k]:
                raise ConfigError(
                    f"hme: {k}={getattr(self, k)!r}: expected one of {', '.join(self.CHOICES[k])}")
        if self.retriever not in RETRIEVERS:
            raise ConfigError(
                f"hme: retriever={self.retriever!r}: expected one of "
                f"{', '.join(RETRIEVERS.names())} (register more with register_retriever)"
            )
        for k in ("k", "bank_size", "max_steps", "d", "heads", "num_latents"):
            if getattr(self, k) < 1:
                raise ConfigError(f"hme: {k}={getattr(self, k)}: expected an integer >= 1")
        if self.d % self.heads:
            raise ConfigError(f"hme: d={self.d} must be divisible by heads={self.heads}")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ConfigError(
                f"hme: kernel_size={self.kernel_size} must be odd (same-length padding keeps "
                f"step t aligned with its mask only for odd kernels)"
            )
        if not 0 < self.weight_lb <= self.weight_ub:
            raise ConfigError(
                f"hme: weight_lb={self.weight_lb}, weight_ub={self.weight_ub}: expected "
                f"0 < weight_lb <= weight_ub"
            )


def _block(d: int, dropout: float, act: str = "gelu", ff: int = 2) -> dict:
    """Options of HME's attention blocks (``layers.attention.AttentionBlock``): feed-forward
    ``ff`` x d with ``act`` (ours: GELU 2d; "geglu": GEGLU 4d with bias-free query/key/value
    projections, the reference's latent blocks), dropout on the attention output and the
    feed-forward hidden layer, none on the feed-forward output nor on the attention weights
    (that would take torch off its fused attention kernel: slow on CPU)."""
    if act == "geglu":
        return dict(ff=4 * d, act="geglu", bias=False, ff_dropout=dropout, res_dropout=dropout,
                    ff_res_dropout=0.0)
    return dict(ff=ff * d, act=act, ff_dropout=dropout, res_dropout=dropout, ff_res_dropout=0.0)


class _LatentTransformer(nn.Module):
    """Perceiver-style: learned latents cross-attend to a context set, then self-attend;
    returns the latent tokens (B, n_latents, d), layer-normed."""

    def __init__(
        self, d: int, n_latents: int, depth: int, heads: int, dropout: float, act: str = "gelu"
    ) -> None:
        super().__init__()
        self.latents = nn.Parameter(torch.randn(n_latents, d) * 0.02)
        kw = _block(d, dropout, act)
        self.layers = nn.ModuleList(
            nn.ModuleList([AttentionBlock(d, heads, cross=True, **kw), AttentionBlock(d, heads, **kw)])
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(d)

    def forward(self, ctx: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """ctx (B, S, d); keep (B, S) bool, the context entries that may be attended."""
        mask, empty = (None, None) if keep is None else attention_mask(keep)
        x = self.latents.expand(ctx.shape[0], -1, -1)
        for cross, self_attn in self.layers:
            x = self_attn(cross(x, mask, empty, ctx))
        return self.norm(x)


def _encoder(d: int, depth: int, heads: int, dropout: float, cross: bool = False,
             act: str = "gelu", ff: int = 2):
    """Blocks (self-attention, or queries reading a context), then a LayerNorm. Masked steps
    are zeroed before the projections, so the encoders need not zero them again."""
    return AttentionEncoder(d, heads, depth, cross=cross, zero_masked=False,
                            **_block(d, dropout, act, ff))


class _VIB(nn.Module):
    """Variational bottleneck (Alemi et al. 2017): (z, sigma, prediction, KL to N(0, I))."""

    def __init__(self, d: int, out_dim: int = 1) -> None:
        super().__init__()
        self.enc = mlp([d, 2 * d, 2 * d, 2 * d])
        self.dec = nn.Linear(d, out_dim)

    def forward(self, h: torch.Tensor):
        mu, s = self.enc(h).chunk(2, dim=-1)
        sigma = F.softplus(s - 5.0) + 1e-4  # reference: softplus(s - 5); floor keeps log finite
        z = mu + torch.randn_like(sigma) * sigma if self.training else mu
        kl = 0.5 * (mu.pow(2) + sigma.pow(2) - 2 * sigma.log() - 1).mean()
        return z, sigma, self.dec(z), kl  # prediction (B, out_dim)


class _WeightedFusion(nn.Module):
    """Softmax over n inputs of (MLP logits * d^-0.5 + log prior); weighted sum, (B, d)."""

    def __init__(self, d: int, n: int, dropout: float) -> None:
        super().__init__()
        self.att = mlp([n * d, d, n], dropout)
        self.scale = d**-0.5

    def forward(self, feats: list[torch.Tensor], log_prior: torch.Tensor) -> torch.Tensor:
        logits = self.att(torch.cat(feats, -1)) * self.scale + log_prior  # (B, n)
        w = logits.softmax(-1)
        return (torch.stack(feats, 1) * w.unsqueeze(-1)).sum(1)


def _gather_rows(reps: torch.Tensor, has: torch.Tensor, ids: torch.Tensor):
    """All ranks' bank rows (B, M, d), (B, M), (B,) in rank order, the tensors unchanged
    outside a multi-process group. One all_gather of the sizes, one of the rows packed into
    float64 (exact for float32 vectors, flags and ids below 2**53), padded to the largest share.
    A training id that occurs twice is kept once, its first copy: the engine hands a rank left
    without rows of a global batch that batch's first row at loss weight 0 (a padding row,
    msakit.train.engine._IndexSampler), whose real copy is on rank 0, earlier in rank order."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return reps, has, ids
    b, m, d = reps.shape
    n = torch.tensor([b], device=reps.device)
    sizes = [torch.zeros_like(n) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, n)
    top = int(max(int(s) for s in sizes))
    rows = torch.cat([reps.reshape(b, m * d).double(), has.double(), ids.double()[:, None]], 1)
    rows = torch.cat([rows, rows.new_zeros(top - b, rows.shape[1])])
    parts = [torch.zeros_like(rows) for _ in sizes]
    dist.all_gather(parts, rows)
    rows = torch.cat([p[: int(s)] for p, s in zip(parts, sizes, strict=True)])
    ids = rows[:, -1].long()
    pos = torch.arange(len(ids), device=ids.device)
    uniq, inv = torch.unique(ids, return_inverse=True)
    first = torch.full((len(uniq),), len(ids), device=ids.device).scatter_reduce(
        0, inv, pos, "amin")
    keep = (ids < 0) | (first[inv] == pos)
    rows = rows[keep]
    return (rows[:, : m * d].reshape(-1, m, d).to(reps.dtype), rows[:, m * d : -1].bool(),
            rows[:, -1].long())


@register_model("hme", HMEConfig)
class HME(MSAModel):
    """HME (NeurIPS 2025): memory-bank cross-sample enhancement, uncertainty-aware fusion."""

    def __init__(self, dims: dict[str, int], config: HMEConfig, n_classes: int = 0) -> None:
        super().__init__(dims, config, n_classes)
        c = config
        c.check()
        self.mods = tuple(self.dims)  # canonical order
        if len(self.mods) < 2:
            raise ConfigError(f"hme: needs at least two modalities, got dims={dims}")
        d, n = c.d, len(self.mods)
        self.proj = nn.ModuleDict(
            {
                m: nn.Conv1d(self.dims[m], d, c.kernel_size, padding=c.kernel_size // 2, bias=False)
                for m in self.mods
            }
        )
        self.pos = PositionalEncoding(d)
        self.enc = nn.ModuleDict(
            {m: _encoder(d, c.enc_layers, c.heads, c.dropout, act=c.enc_act, ff=c.enc_ff)
             for m in self.mods}
        )
        self.missing = nn.Parameter(torch.zeros(n, d))  # absent modality's pooled vector
        lat = (d, c.num_latents, c.latent_depth, c.heads, c.dropout, c.latent_act)
        self.latent_mod = nn.ModuleDict({m: _LatentTransformer(*lat) for m in self.mods})
        self.latent_sample = _LatentTransformer(*lat)
        self.mod_emb = nn.Parameter(torch.randn(n, d) * 0.02)
        self.pairs = [(a, b) for a in self.mods for b in self.mods if a != b]
        cross = (d, c.hyper_depth, c.heads, c.dropout, True, c.latent_act)
        self.pair_enc = nn.ModuleDict({f"{a}2{b}": _encoder(*cross) for a, b in self.pairs})
        self.hyper_enc = nn.ModuleDict({m: _encoder(*cross) for m in self.mods})
        # per-modality label predictions (out_dim outputs each: a class per logit if classifying)
        self.vib = nn.ModuleDict({m: _VIB(d, self.out_dim) for m in self.mods})
        self.refine = nn.ModuleDict({m: _WeightedFusion(d, 2, c.dropout) for m in self.mods})
        self.hyper_fuse = _WeightedFusion(d, n, c.dropout)
        self.fusion = AttentionEncoder.like_torch(
            d, c.heads, 2, c.fusion_ff or 2 * d, c.dropout, c.dropout)
        self.head = mlp([(n + 1) * d, 2 * d, self.out_dim], c.dropout)
        # the memory bank (see the module docstring); ids are training-split rows, -1 = empty
        cap = c.bank_size if c.retrieval == "bank" else 0
        self.register_buffer("bank_x", torch.zeros(cap, n, d))
        self.register_buffer("bank_present", torch.zeros(cap, n, dtype=torch.bool))
        self.register_buffer("bank_ids", torch.full((cap,), -1, dtype=torch.long))
        self.register_buffer("bank_ptr", torch.zeros((), dtype=torch.long))
        self._bank_version = 0
        self._index_cache: dict[int, tuple[Any, Retriever, torch.Tensor]] = {}

    # ---------------------------------------------------------------- encoding
    def encode(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled per-modality vectors (B, M, d) and presence (B, M) from the batch masks;
        absent modalities hold their learned missing vector."""
        reps, has, _ = self._encode(batch)
        return reps, has

    def _encode(self, batch: Batch):
        """``encode`` plus each modality's encoded steps and observed mask [(B, L, d), (B, L)]."""
        reps, has, seqs = [], [], []
        for mi, m in enumerate(self.mods):
            obs = batch.observed(m)  # (B, L)
            x = batch.x[m].masked_fill(~obs.unsqueeze(-1), 0.0)  # content under masks unread
            x, obs = window_mean(x, obs, self.config.max_steps)
            h = self.proj[m](x.transpose(1, 2)).transpose(1, 2)  # (B, L, d)
            h = self.enc[m](self.pos(h), obs)  # rows with nothing observed: replaced below
            if self.config.pool == "max":
                pooled = h.masked_fill(~obs.unsqueeze(-1), torch.finfo(h.dtype).min).amax(1)
            else:
                w = obs.unsqueeze(-1).to(h.dtype)
                pooled = (h * w).sum(1) / w.sum(1).clamp_min(1.0)
            hm = obs.any(1)
            reps.append(torch.where(hm[:, None], pooled, self.missing[mi].expand_as(pooled)))
            has.append(hm)
            seqs.append((h, obs))
        return torch.stack(reps, 1), torch.stack(has, 1), seqs

    # ---------------------------------------------------------------- memory bank
    def bank_len(self) -> int:
        """Number of filled bank entries."""
        return int((self.bank_ids != -1).sum())

    def _index(self, mi: int) -> tuple[Retriever, torch.Tensor]:
        """Retriever over the bank entries where modality ``mi`` was observed, and their
        vectors (N_m, d); rebuilt only when the bank changed."""
        key = (self._bank_version, self.bank_x.device)
        hit = self._index_cache.get(mi)
        if hit is not None and hit[0] == key:
            return hit[1], hit[2]
        sel = self.bank_present[:, mi] & (self.bank_ids != -1)
        vals = self.bank_x[sel, mi]  # (N_m, d) copy
        r = make_retriever(self.config.retriever)
        r.add(vals, self.bank_ids[sel])
        self._index_cache[mi] = (key, r, vals)
        return r, vals

    def retrieve(
        self, reps: torch.Tensor, has: torch.Tensor, ids: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Neighbours from the bank: (B, M, k, d) vectors and (B, M, k) validity (observed
        query, an entry exists, cosine >= threshold, not the sample itself)."""
        c = self.config
        out, valid = [], []
        for mi in range(len(self.mods)):
            r, vals = self._index(mi)
            scores, pos = r.search(reps[:, mi].detach(), c.k, exclude_ids=ids)
            ok = (pos >= 0) & (scores >= c.sim_threshold) & has[:, mi : mi + 1]
            nb = vals[pos.clamp_min(0)] if len(vals) else reps.new_zeros(*pos.shape, c.d)
            out.append(nb)
            valid.append(ok)
        return torch.stack(out, 1), torch.stack(valid, 1)

    @torch.no_grad()
    def _write_bank(self, reps: torch.Tensor, has: torch.Tensor, ids: torch.Tensor | None):
        """Store a training batch: known ids overwrite their entry, new ones go to the FIFO.

        Data parallel training (msakit.train.engine): each rank holds a share of the global
        batch, so the shares are all-gathered in rank order and every rank writes the whole
        global batch, as one process would (its bank stays equal on every rank)."""
        keep = has.any(1)
        reps, has = reps[keep].detach(), has[keep]
        cap = self.bank_ids.shape[0]
        if ids is None:  # unknown rows: FIFO only, id -2 (never matched or excluded)
            ids = torch.full((reps.shape[0],), -2, dtype=torch.long, device=reps.device)
        else:
            ids = ids[keep].to(self.bank_ids.device)
        reps, has, ids = _gather_rows(reps, has, ids)
        known = torch.zeros_like(ids, dtype=torch.bool)
        if (ids >= 0).any():
            match = (ids[:, None] == self.bank_ids[None, :]) & (ids[:, None] >= 0)  # (B, cap)
            known = match.any(1)
            slots = match[known].float().argmax(1)
            self.bank_x[slots], self.bank_present[slots] = reps[known], has[known]
        new = (~known).nonzero().squeeze(1)[-cap:]
        if len(new):
            slots = (self.bank_ptr + torch.arange(len(new), device=new.device)) % cap
            self.bank_x[slots], self.bank_present[slots] = reps[new], has[new]
            self.bank_ids[slots] = ids[new]
            self.bank_ptr.copy_((self.bank_ptr + len(new)) % cap)
        self._bank_version += 1

    def set_bank(self, reps: torch.Tensor, has: torch.Tensor, ids: torch.Tensor) -> None:
        """Replace the bank with exactly these entries (N, M, d), (N, M), (N,)."""
        self.bank_x = reps.detach().clone()
        self.bank_present = has.clone()
        self.bank_ids = ids.long().clone()
        self.bank_ptr = torch.zeros((), dtype=torch.long, device=reps.device)
        self._bank_version += 1

    @torch.no_grad()
    def on_fit_end(self, engine: Any) -> None:
        """Fill the bank from the whole (clean) training split with the final weights."""
        if self.config.retrieval == "none":
            return
        was = self.training
        self.eval()
        dev = self.bank_x.device
        reps, has, ids = [], [], []
        for b in engine.train_batches(self):
            b = self.prepare_batch(b.to(dev))  # encode() bypasses the forward pre-hook
            r, h = self.encode(b)
            keep = h.any(1)
            idx = b.index.to(dev) if b.index is not None else torch.arange(b.size, device=dev)
            reps.append(r[keep])
            has.append(h[keep])
            ids.append(idx[keep])
        if reps:
            self.set_bank(torch.cat(reps), torch.cat(has), torch.cat(ids))
        self.train(was)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # the saved bank may have any number of entries: take its size before loading
        for name in _BANK:
            t = state_dict.get(prefix + name)
            cur = getattr(self, name)
            if t is not None and t.shape != cur.shape:
                setattr(self, name, torch.empty(t.shape, dtype=cur.dtype, device=cur.device))
        self._bank_version += 1
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ---------------------------------------------------------------- forward
    def forward(self, batch: Batch) -> Output:
        c = self.config
        reps, has, seqs = self._encode(batch)  # (B, M, d), (B, M), per modality (h, obs)
        b, n_mods = reps.shape[:2]
        if c.retrieval == "none":
            nb = reps.new_zeros(b, n_mods, 0, c.d)
            nb_ok = torch.zeros(b, n_mods, 0, dtype=torch.bool, device=reps.device)
        else:
            train_ids = batch.index if self.training else None
            nb, nb_ok = self.retrieve(reps, has, train_ids)  # (B, M, k, d), (B, M, k)
            if self.training and torch.is_grad_enabled():
                self._write_bank(reps, has, batch.index)

        # enhanced modalities: latents read [pooled vector; observed steps; neighbours] (ours)
        # or the neighbours only (reference); there, a sample without a neighbour above the
        # threshold reads its own pooled vector (the reference: the batch mean)
        one = torch.ones(b, 1, dtype=torch.bool, device=reps.device)
        enh = {}
        for mi, m in enumerate(self.mods):
            h, obs = seqs[mi]
            if c.enhance == "neighbours":
                ctx = torch.cat([reps[:, mi : mi + 1], nb[:, mi]], 1)  # (B, 1 + k, d)
                keep = torch.cat([~nb_ok[:, mi].any(1, keepdim=True), nb_ok[:, mi]], 1)
            else:
                ctx = torch.cat([reps[:, mi : mi + 1], h, nb[:, mi]], 1)  # (B, 1 + L + k, d)
                keep = torch.cat([one, obs, nb_ok[:, mi]], 1)
            enh[m] = self.latent_mod[m](ctx, keep)  # (B, n_latents, d)
        summary = self.latent_sample(reps + self.mod_emb)  # (B, n_latents, d)

        # hyper-modalities: m's latents query each other modality's, the summary reads the pairs
        pair = {(a, o): self.pair_enc[f"{a}2{o}"](enh[a], src=enh[o]) for a, o in self.pairs}
        zs, sig, preds, kls, refined = [], [], [], [], []
        for mi, m in enumerate(self.mods):
            ctx = torch.cat([pair[(m, o)] for o in self.mods if o != m], 1)
            hyper = self.hyper_enc[m](summary, src=ctx).mean(1)  # (B, d)
            z, sigma, p, kl = self.vib[m](hyper)
            s = sigma.mean(-1)  # (B,)
            w = (1.0 / s).clamp(c.weight_lb, c.weight_ub)
            prior = torch.stack(
                [torch.zeros_like(s).masked_fill(~has[:, mi], float("-inf")), w.log()], -1
            )
            refined.append(self.refine[m]([reps[:, mi], z], prior))
            zs.append(z)
            sig.append(s)
            preds.append(self.head_output(p))
            kls.append(kl)
        sig_t = torch.stack(sig, 1)  # (B, M)
        prec = 1.0 / sig_t
        hyper_all = self.hyper_fuse(zs, (prec / prec.sum(1, keepdim=True)).log())

        tokens = torch.stack([*refined, hyper_all], 1)  # (B, M + 1, d)
        h = self.fusion(tokens).reshape(b, -1)
        pred = self.head_output(self.head(h))
        return Output(
            pred,
            {
                "pred_m": torch.stack(preds, 1),
                "kl": torch.stack(kls).mean(),
                "sigma": sig_t,
                "uncertainty": sig_t.mean(1),
                "neighbours": nb_ok.sum(-1),  # (B, M) neighbours used per modality
            },
        )

    def loss(self, out: Output, batch: Batch) -> dict[str, torch.Tensor]:
        c = self.config
        reg = self.regression_loss(out.pred, batch.y)
        pm = out.extras["pred_m"]
        uni = torch.stack(
            [self.regression_loss(pm[:, i], batch.y) for i in range(pm.shape[1])]
        ).mean()
        kl = out.extras["kl"]
        total = reg + c.w_unimodal * uni + c.w_kl * kl
        return {"total": total, "pred": reg, "unimodal": uni, "kl": kl}

    def param_groups(self) -> list[dict]:
        """Weight decay on matrices only (reference: none on biases and LayerNorm weights)."""
        decay, no_decay = [], []
        for p in self.parameters():
            if p.requires_grad:
                (decay if p.ndim > 1 else no_decay).append(p)
        return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
