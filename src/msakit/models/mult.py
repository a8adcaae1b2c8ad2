"""MulT: the Multimodal Transformer for unaligned multimodal language sequences.

Tsai et al., "Multimodal Transformer for Unaligned Multimodal Language Sequences", ACL 2019.
Reference code: github.com/yaohungt/Multimodal-Transformer and MMSA 2.2.1's ``MULT`` (its
``config_regression.json`` MOSI entry gives the default sizes). Read, not copied.

Blocks, in forward order (M modalities, all projected to width d):

1. Temporal projection: per modality a Conv1d (kernel 5, no bias) to d. Masked steps are zeroed
   first, so a kernel wider than 1 never carries their content into observed steps; the
   convolution is padded to keep the length (the reference uses no padding and loses 4 steps),
   so step t of the output stays aligned with the mask of step t. Text gets input dropout.
2. Crossmodal transformers, one per ordered pair (target m <- source s; 6 for three
   modalities): both sequences are scaled by sqrt(d), given sinusoidal positions and embedding
   dropout; m's steps query s's steps through ``layers`` pre-norm blocks (the shared
   ``layers.attention.AttentionEncoder``; query and source share each block's first LayerNorm,
   feed-forward d-4d-d with ReLU, a final LayerNorm), key padding masks from
   ``batch.observed``. A sample whose source s has no observed step gets a learned attention
   output in every block, so m's own content still flows through the residual path.
3. Memory transformers, one per target: self-attention over the concatenation of m's
   crossmodal outputs (width (M-1)*d, embedded the same way), ``mem_layers`` blocks.
4. Pooling over m's observed steps only (mean, or the last observed step with ``pool="last"``);
   a sample with nothing observed in m gets a learned missing state instead, so absent
   modalities never produce NaNs and never depend on masked content.
5. Head: concatenation (M*(M-1)*d), residual block proj2(dropout(relu(proj1(h)))) + h, linear
   output (as the reference): one value, or K logits with ``n_classes = K`` (cross-entropy).

Modules are built in the canonical modality order (text, audio, vision) whatever the dataset's
dict order, so seeded initialisation does not depend on it. ``d`` must be divisible by
``heads`` and ``conv_kernel`` odd (checked when the config is made).

Attention runs on torch's fused ``scaled_dot_product_attention``; there is no per-step loop.
On CPU its cost grows with heads x query steps x key steps almost regardless of the head
width, so MMSA's 10 heads of width 5 dominate a training step; ``heads=2`` keeps every
parameter (the head count changes no weight shape) and makes a step about 3x cheaper
(``benchmarks/bench_mult_vs_mmsa.py``).

Defaults following MMSA's MOSI config: d=50, 10 heads, 4 crossmodal layers, memory depth
max(4, 3) = 4, Conv1d kernel 5, attention dropout 0.3 for text keys and the memory transformers,
0.2 for audio keys, 0.0 for vision keys (MMSA indexes it by the source modality), ReLU and
residual dropout 0, embedding dropout 0.2, text input dropout 0.5, output dropout 0.5, L1 loss,
lr 2e-3, batch 16, no weight decay (MMSA's Adam receives none). Ours: attention dropout drops
keys before the softmax (``attn_dropout_mode="key"``, see ``layers.attention``) instead of
attention weights, so the fused kernel is kept; set ``"weights"`` for the reference behaviour
(much slower on CPU). Sinusoidal positions follow the original code (MMSA switches them off).
No causal "future" mask: MulT's reference masks keys beyond a length-offset diagonal, which only
makes sense for unpadded sequences with the last step read out; we pool over observed steps.
Same-length convolution padding, the learned missing / null states, mean pooling and gradient
norm clipping at 1.0 (MMSA clips gradient values at 0.6; the engine clips norms) are ours.
The parameter count equals MMSA's MulT plus the null states (M*(M-1)*layers*d) and missing
states (M*(M-1)*d): 1,500 more than MMSA's 2.57M at the defaults.

``--preset paper`` (``MulTConfig.PRESETS``: MMSA 2.2.1's MOSI entry and its MulT trainer)
against the default; sizes are the same (2.57M):

| field | paper (MMSA) | default (ours) |
|---|---|---|
| attn_dropout_mode | weights | key (fused kernel) |
| positions, pool | off, last observed step | sinusoidal, mean over observed steps |
| optimiser | Adam, gradients accumulated over 8 batches (MMSA sums them, the engine averages) | AdamW, every batch |
| gradient clipping | 0.6 by value | 1.0 by norm |
| lr schedule | x0.1 after 5 epochs without a better validation MAE | constant |
| patience | 8 | 8 |

Text path of the reported numbers: precomputed text features (``text_encoder=features``,
the default) everywhere in BENCHMARKS.md; ``--set text_encoder=NAME`` fine-tunes a pretrained
encoder on the transcripts instead (models/layers/text.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import permutations
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from msakit.data.batch import Batch
from msakit.errors import ConfigError
from msakit.models.base import ModelConfig, MSAModel, Output, register_model
from msakit.models.layers import PositionalEncoding, masked_mean
from msakit.models.layers.attention import DROPOUT_MODES, AttentionEncoder

POOLS = ("mean", "last")


@dataclass
class MulTConfig(ModelConfig):
    d: int = 50
    heads: int = 10
    layers: int = 4  # crossmodal depth
    mem_layers: int = 4  # memory (self-attention) depth
    conv_kernel: int = 5
    attn_dropout: float = 0.3  # keys from text, and the memory transformers
    attn_dropout_audio: float = 0.2  # keys from audio
    attn_dropout_vision: float = 0.0  # keys from vision
    attn_dropout_mode: str = "key"  # "key" (fused kernel) or "weights" (reference, slow)
    relu_dropout: float = 0.0
    res_dropout: float = 0.0
    embed_dropout: float = 0.2
    text_dropout: float = 0.5
    output_dropout: float = 0.5
    positions: bool = True
    pool: str = "mean"  # "mean" over observed steps or "last" observed step
    lr: float = 2e-3
    batch_size: int = 16
    weight_decay: float = 0.0
    grad_clip: float = 1.0

    CHOICES: ClassVar[dict[str, tuple]] = {
        **ModelConfig.CHOICES,
        "pool": POOLS,
        "attn_dropout_mode": DROPOUT_MODES,
    }
    # MMSA 2.2.1 (thuiar/MMSA @ a94e65d): src/MMSA/config/config_regression.json (mult, mosi;
    # line numbers of the repository's file) and trains/singleTask/MULT.py
    PRESETS: ClassVar[dict[str, dict]] = {"paper": {
        "d": 50, "heads": 10, "layers": 4, "mem_layers": 4,  # :537, :540 nlevels
        "conv_kernel": 5,  # :541-543
        "attn_dropout": 0.3, "attn_dropout_audio": 0.2, "attn_dropout_vision": 0.0,  # :545, :532-533
        "attn_dropout_mode": "weights",  # models/subNets/transformers_encoder: weight dropout
        "relu_dropout": 0.0, "res_dropout": 0.0, "embed_dropout": 0.2,  # :534-536
        "text_dropout": 0.5, "output_dropout": 0.5,  # :544, :546
        "positions": False,  # transformer.py:26 (position embeddings off by default)
        "pool": "last",  # MulT reads the last step of each memory transformer
        "optimizer": "adam", "lr": 2e-3, "weight_decay": 0.0,  # :539; MULT.py:21 passes no decay
        "batch_size": 16,  # :538
        "accumulate": 8,  # :528 update_epochs (MMSA sums the 8 gradients; Lightning averages)
        "grad_clip": 0.6, "grad_clip_mode": "value",  # :547; MULT.py:60-61
        "lr_schedule": "plateau", "plateau_factor": 0.1, "plateau_patience": 5,  # :548; MULT.py:22
        "patience": 8,  # :524 early_stop
        "epochs": 200,  # MMSA has no epoch cap (it stops early); 200 is ours
        "default_corrupt": None,
    }}

    def check(self) -> None:
        for k in ("pool", "attn_dropout_mode"):  # also when a config is built directly
            if getattr(self, k) not in self.CHOICES[k]:
                raise ConfigError(
                    f"mult: {k}={getattr(self, k)!r}: expected one of {', '.join(self.CHOICES[k])}"
                )
        for k in ("d", "heads", "conv_kernel"):
            if getattr(self, k) < 1:
                raise ConfigError(f"mult: {k}={getattr(self, k)}: expected an integer >= 1")
        if self.d % self.heads:
            near = self.heads * max(1, round(self.d / self.heads))
            fit = max(h for h in range(1, self.heads + 1) if self.d % h == 0)
            raise ConfigError(
                f"mult: d={self.d} must be divisible by heads={self.heads} "
                f"(e.g. d={near}, or heads={fit} with d={self.d})"
            )
        if self.conv_kernel % 2 == 0:
            raise ConfigError(
                f"mult: conv_kernel={self.conv_kernel} must be odd (same-length padding keeps step t "
                f"aligned with its mask only for odd kernels)"
            )


def last_observed(h: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
    """h (B, L, D), obs (B, L) bool -> (B, D) at each row's last observed step (step 0 if none)."""
    L = obs.shape[1]
    steps = torch.arange(L, device=obs.device).expand_as(obs)
    idx = torch.where(obs, steps, -1).amax(1).clamp_min(0)  # (B,)
    return h[torch.arange(h.shape[0], device=h.device), idx]


@register_model("mult", MulTConfig)
class MulT(MSAModel):
    """MulT (Tsai et al. 2019): crossmodal transformers for every modality pair, masked."""

    def __init__(self, dims: dict[str, int], config: MulTConfig, n_classes: int = 0) -> None:
        super().__init__(dims, config, n_classes)
        c = config
        c.check()
        self.mods = tuple(self.dims)  # canonical order, whatever order dims came in
        if len(self.mods) < 2:
            raise ConfigError(f"mult needs at least two modalities, got dims={dims}")
        k = c.conv_kernel
        self.proj = nn.ModuleDict(
            {m: nn.Conv1d(self.dims[m], c.d, k, padding=k // 2, bias=False) for m in self.mods}
        )
        key_drop = {"text": c.attn_dropout, "audio": c.attn_dropout_audio}
        key_drop["vision"] = c.attn_dropout_vision
        common = dict(
            zero_masked=False,  # masked steps are zeroed before the convolutions
            dropout_mode=c.attn_dropout_mode,
            ff_dropout=c.relu_dropout,
            res_dropout=c.res_dropout,
            init="xavier",
        )
        self.pairs = list(permutations(self.mods, 2))  # (target, source)
        self.cross = nn.ModuleDict(
            {
                f"{t}<-{s}": AttentionEncoder(
                    c.d, c.heads, c.layers, attn_dropout=key_drop.get(s, c.attn_dropout),
                    null=True, **common,
                )
                for t, s in self.pairs
            }
        )
        dm = (len(self.mods) - 1) * c.d
        self.mem = nn.ModuleDict(
            {
                m: AttentionEncoder(dm, c.heads, c.mem_layers, attn_dropout=c.attn_dropout, **common)
                for m in self.mods
            }
        )
        self.pos = nn.ModuleList(PositionalEncoding(w) for w in (c.d, dm)) if c.positions else None
        self.missing = nn.ParameterDict({m: nn.Parameter(torch.zeros(dm)) for m in self.mods})
        dc = len(self.mods) * dm
        self.proj1, self.proj2 = nn.Linear(dc, dc), nn.Linear(dc, dc)
        self.out = nn.Linear(dc, self.out_dim)

    def _embed(self, x: torch.Tensor, which: int = 0) -> torch.Tensor:
        """Transformer input: x * sqrt(width), sinusoidal positions (``which``: 0 crossmodal
        width d, 1 memory width), embedding dropout; drawn anew for every transformer."""
        x = x * math.sqrt(x.shape[-1])
        if self.pos is not None:
            x = self.pos[which](x)
        return F.dropout(x, self.config.embed_dropout, self.training)

    def forward(self, batch: Batch) -> Output:
        c = self.config
        obs = {m: batch.observed(m) for m in self.mods}
        h = {}
        for m in self.mods:
            x = batch.x[m].masked_fill(~obs[m].unsqueeze(-1), 0.0)
            if m == "text":
                x = F.dropout(x, c.text_dropout, self.training)
            # (B, L_m, d), contiguous: a transposed layout would make every later op copy
            h[m] = self.proj[m](x.transpose(1, 2)).transpose(1, 2).contiguous()
        feats = []
        for m in self.mods:
            z = torch.cat(
                [
                    self.cross[f"{m}<-{s}"](self._embed(h[m]), obs[s], self._embed(h[s]))
                    for t, s in self.pairs
                    if t == m
                ],
                dim=-1,
            )  # (B, L_m, (M-1)*d)
            z = self.mem[m](self._embed(z, 1), obs[m])
            pooled = masked_mean(z, obs[m]) if c.pool == "mean" else last_observed(z, obs[m])
            has = obs[m].any(1, keepdim=True)
            feats.append(torch.where(has, pooled, self.missing[m].expand_as(pooled)))
        f = torch.cat(feats, -1)  # (B, M*(M-1)*d)
        r = self.proj2(F.dropout(F.relu(self.proj1(f)), c.output_dropout, self.training))
        return Output(self.head_output(self.out(r + f)), {"fused": f})
