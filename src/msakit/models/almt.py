"""ALMT: the adaptive language-guided multimodal transformer.

Zhang, Wang, Li, Zhang, Yang, Sun, "Learning Language-guided Adaptive Hyper-modality
Representation for Multimodal Sentiment Analysis", EMNLP 2023. Reference code: MMSA's master
branch ``ALMT`` (``models/singleTask/ALMT.py`` and ``trains/singleTask/ALMT.py``, after
github.com/Haoyu-ha/ALMT; not in the 2.2.1 package), with the sizes of its
``config_regression.json`` MOSI entry. Read, not copied.

Blocks, in forward order (d = 128, 8 tokens):

1. Token embedding, per modality: a linear projection to d, positions, and a transformer
   (``embed_depth`` = 1 layer) over [8 learned tokens; the steps]; the 8 tokens' outputs are
   kept (h_l, h_a, h_v).
2. Language encoder: h_l plus learned positions through ``ahl_depth - 1`` = 2 layers; its input
   and every layer's output are kept (3 language states).
3. Adaptive hyper-modality learning (AHL): 8 hyper tokens; at layer i the i-th language state
   queries the audio tokens and the vision tokens (two attentions, heads of d / ``heads``), and
   the summed answers shift the normalised hyper tokens (``layers.HyperModalityLayer``, the
   same layer lnln uses).
4. Fusion: a cross transformer (``fusion_depth`` = 2) in which [token; last language state]
   queries [token; hyper tokens] (learned positions on both); the output at the token goes to a
   linear head (one value, or K logits with ``n_classes = K``).

Every transformer is pre-norm with bias-free query/key/value projections, heads of
``dim_head`` = 64 (8 x 64 = 512 wide on a 128-wide model, MMSA's), GELU feed-forwards and no
dropout, built on the shared ``layers.AttentionEncoder``. The language-guided design takes text
as the dominant modality (``dominant=auto``: text when present, else the first modality).

Follows MMSA (MOSI): d 128, 8 tokens, embedding depth 1, 8 heads everywhere, feed-forward 128,
AHL depth 3, fusion depth 2, MSE, AdamW lr 1e-4 weight decay 1e-4, batch 64. Its trainer warms
the lr up over 10% of 200 epochs, then cosine (``--preset paper``: ``lr_schedule=cosine``,
``warmup_frac=0.1``, 200 epochs, early stopping after 32); the default is the engine's constant
lr with early stopping on validation. MMSA's ``max_grad_norm`` (2) is never applied by its
trainer, so there is no clipping.

Where we differ from MMSA:

- Masks. MMSA's transformers attend over every position: BERT's padding tokens and the
  zero-padded audio/video frames (up to 375/500 at MOSI's unaligned lengths). Here only the
  learned tokens and the observed steps are keys; a modality absent for a sample leaves its
  tokens attending to the tokens alone, so they depend on no input content (no parameters
  added).
- Positions. MMSA learns a position table per modality for its fixed lengths (50 + 8, 375 + 8,
  500 + 8 rows); ours adds sinusoidal positions to the steps (at their original time index, so
  a dropped step does not shift the others; any length) and starts the 8 tokens from N(0, 1),
  which is what MMSA's zero tokens plus their random position rows are at initialisation:
  121,472 parameters fewer at MOSI shapes.
- One LayerNorm before self-attention (keys, values and queries are the same normalised
  tokens; MMSA normalises q, k and v separately) and one for the source of the fusion's
  cross-attention (MMSA: separate k and v norms): 5 x 512 + 2 x 256 = 3,072 fewer. Our count at
  MOSI shapes: MMSA's 2,603,649 - 121,472 - 3,072 = 2,479,105.
- The hyper tokens start from N(0, 1), not ones (through the first LayerNorm a constant row
  gives that norm's weight no gradient at the first step), as lnln.py.
- Speed only, same function: the embedding's single layer computes only the 8 token queries
  (the steps' outputs are never read) and the fusion's last layer only the token's.

Text path of the reported numbers: precomputed text features (``text_encoder=features``, the
default); ``--set text_encoder=NAME`` fine-tunes a pretrained encoder on the transcripts
(models/layers/text.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from msakit.data.batch import MODALITIES, Batch
from msakit.errors import ConfigError
from msakit.models.base import ModelConfig, MSAModel, Output, register_model
from msakit.models.layers import AttentionEncoder, HyperModalityLayer, PositionalEncoding


@dataclass
class ALMTConfig(ModelConfig):
    d: int = 128
    n_tokens: int = 8
    heads: int = 8  # every attention (MMSA: embedding, language encoder, AHL and fusion heads)
    dim_head: int = 64  # the transformers' heads; AHL's are d / heads wide (MMSA)
    ff: int = 128  # token embedding feed-forward (the language encoder's is d, as MMSA)
    embed_depth: int = 1
    ahl_depth: int = 3  # hyper-modality layers; the language encoder has ahl_depth - 1
    fusion_depth: int = 2
    fusion_ff: int = 128
    dropout: float = 0.0
    dominant: str = "auto"  # "auto": text when present, else the first modality
    loss: str = "mse"
    lr: float = 1e-4
    weight_decay: float = 1e-4
    batch_size: int = 64

    CHOICES: ClassVar[dict[str, tuple]] = {**ModelConfig.CHOICES, "dominant": ("auto", *MODALITIES)}
    # MMSA master (thuiar/MMSA @ a94e65d): src/MMSA/config/config_regression.json (almt, mosi;
    # line numbers of the repository's file), models/ and trains/singleTask/ALMT.py
    PRESETS: ClassVar[dict[str, dict]] = {"paper": {
        "d": 128, "ff": 128, "n_tokens": 8,  # :1652-1654
        "embed_depth": 1, "heads": 8,  # :1655-1657, :1659, :1661
        "dim_head": 64,  # models/singleTask/ALMT.py:324, 362 (Transformer defaults)
        "ahl_depth": 3, "fusion_ff": 128, "fusion_depth": 2,  # :1658, :1660, :1662
        "dropout": 0.0,  # models/singleTask/ALMT.py:324, 362 (dropout, emb_dropout defaults)
        "loss": "mse",  # trains/singleTask/ALMT.py:17
        "optimizer": "adamw", "lr": 1e-4, "weight_decay": 1e-4,  # trains:20; :1646-1647
        "text_lr": 1e-4,  # trains:20: BERT in the one AdamW group
        "batch_size": 64,  # :1649
        "grad_clip": 0.0,  # max_grad_norm (:1648) is never applied by the trainer
        "epochs": 200, "patience": 32,  # :1639-1640
        # trains/singleTask/ALMT.py:179-181: linear warm-up over 10% of the epochs, then
        # cosine (stepped per epoch there, per batch here)
        "lr_schedule": "cosine", "warmup_frac": 0.1,
        "default_corrupt": None,
    }}

    def check(self) -> None:
        if self.dominant not in ("auto", *MODALITIES):
            raise ConfigError(
                f"almt: dominant={self.dominant!r}: expected one of auto, {', '.join(MODALITIES)}"
            )
        if self.d % self.heads:  # the AHL layers split d into heads
            raise ConfigError(f"almt: d={self.d} must be divisible by heads={self.heads}")
        if self.ahl_depth < 1:
            raise ConfigError(f"almt: ahl_depth={self.ahl_depth}: expected >= 1")


def _transformer(c: ALMTConfig, depth: int, ff: int, cross: bool = False) -> AttentionEncoder:
    """``depth`` pre-norm blocks: heads of ``dim_head``, bias-free q/k/v, GELU feed-forward
    ``ff``, dropout ``c.dropout`` everywhere, no final LayerNorm; with ``cross`` the source has
    its own LayerNorm."""
    return AttentionEncoder(
        c.d, c.heads, depth, norm=False, dim_head=c.dim_head, ff=ff, act="gelu",
        attn_dropout=c.dropout, ff_dropout=c.dropout, res_dropout=c.dropout, cross=cross,
        bias=False, init="default",
    )


class TokenEmbedding(nn.Module):
    """Linear projection and sinusoidal positions of the steps, then a transformer over
    [n learned tokens; steps] whose keys are the tokens and the observed steps; returns the n
    tokens' outputs (B, n, d)."""

    def __init__(self, c: ALMTConfig, dim_in: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, c.d)
        self.pos = PositionalEncoding(c.d)
        self.tokens = nn.Parameter(torch.randn(1, c.n_tokens, c.d))
        self.enc = _transformer(c, c.embed_depth, c.ff)

    def forward(self, x: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        b, L, _ = x.shape
        if L > self.pos.pe.shape[0]:
            raise ValueError(f"almt: sequences of at most {self.pos.pe.shape[0]} steps, got {L}")
        n = self.tokens.shape[1]
        h = self.pos(self.proj(x.masked_fill(~obs.unsqueeze(-1), 0.0)))
        h = torch.cat([self.tokens.expand(b, -1, -1), h], 1)
        keep = torch.cat([obs.new_ones(b, n), obs], 1)
        return self.enc(h, keep=keep, n_out=n)


@register_model("almt", ALMTConfig)
class ALMT(MSAModel):
    """ALMT (Zhang et al. 2023): language-guided hyper-modality learning, cross-attention fusion.

    MMSA master's sizes; masked attention, no learned position tables."""

    def __init__(self, dims: dict[str, int], config: ALMTConfig, n_classes: int = 0) -> None:
        super().__init__(dims, config, n_classes)
        c = config
        c.check()
        self.mods = tuple(self.dims)  # canonical order
        self.dominant = c.dominant if c.dominant != "auto" else self.mods[0]
        if self.dominant not in self.dims:
            raise ConfigError(
                f"almt: dominant modality {self.dominant!r} not in the dataset's modalities "
                f"{self.mods} (config field 'dominant')"
            )
        self.aux = tuple(m for m in self.mods if m != self.dominant)
        if not self.aux:
            raise ConfigError(
                f"almt needs at least one modality besides {self.dominant!r}, got {dict(self.dims)}"
            )
        n, d = c.n_tokens, c.d
        self.embed = nn.ModuleDict({m: TokenEmbedding(c, self.dims[m]) for m in self.mods})
        self.lang_pos = nn.Parameter(torch.randn(1, n, d))
        self.lang_enc = _transformer(c, c.ahl_depth - 1, d)
        self.hyper_tokens = nn.Parameter(torch.randn(1, n, d))
        self.hyper = nn.ModuleList(HyperModalityLayer(d, c.heads, self.aux) for _ in range(c.ahl_depth))
        self.cross_token = nn.Parameter(torch.zeros(1, 1, d))
        self.cross_pos_src = nn.Parameter(torch.randn(1, n + 1, d))
        self.cross_pos_tgt = nn.Parameter(torch.randn(1, n + 1, d))
        self.fusion = _transformer(c, c.fusion_depth, c.fusion_ff, cross=True)
        self.head = nn.Linear(d, self.out_dim)

    def forward(self, batch: Batch) -> Output:
        b = batch.size
        h = {m: self.embed[m](batch.x[m], batch.observed(m)) for m in self.mods}
        states = self.lang_enc(h[self.dominant] + self.lang_pos, all_layers=True)
        hyper = self.hyper_tokens.expand(b, -1, -1)
        aux = {m: h[m] for m in self.aux}
        for layer, dom in zip(self.hyper, states, strict=True):
            hyper = layer(dom, aux, hyper)
        tok = self.cross_token.expand(b, -1, -1)
        src = torch.cat([tok, hyper], 1) + self.cross_pos_src
        tgt = torch.cat([tok, states[-1]], 1) + self.cross_pos_tgt
        fused = self.fusion(tgt, src=src, n_out=1)[:, 0]
        return Output(self.head_output(self.head(fused)), {"tokens": h, "hyper": hyper})
