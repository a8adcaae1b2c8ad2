"""Late fusion (LF-DNN in MMSA): one encoder per modality, pooled, concatenated, MLP head.

Each modality: linear projection, a small masked transformer, masked mean pooling over the
observed steps. An absent modality contributes a learned "missing" vector instead of its
pooled features, and a presence flag, so the head knows what it did not see. With
``n_classes = K`` the head outputs K logits (cross-entropy). Defaults are ours.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from msakit.data.batch import Batch
from msakit.errors import ConfigError
from msakit.models.base import ModelConfig, MSAModel, Output, register_model
from msakit.models.layers import MaskedTransformer, masked_mean, mlp


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
            {m: MaskedTransformer(c.d, c.layers, c.heads, 2 * c.d, c.dropout) for m in self.mods}
        )
        self.missing = nn.ParameterDict({m: nn.Parameter(torch.zeros(c.d)) for m in self.mods})
        # an empty modality is replaced after pooling (self.missing), so the encoders' own
        # "empty row" vectors never reach the output: keep them frozen
        for enc in self.enc.values():
            enc.missing.requires_grad_(False)
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
