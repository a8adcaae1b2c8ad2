"""LMF: Low-rank Multimodal Fusion.

Liu, Shen, Lakshminarasimhan, Liang, Zadeh, Morency, "Efficient Low-rank Multimodal Fusion with
Modality-Specific Factors", ACL 2018. Reference code: MMSA 2.2.1's ``LMF``
(``models/singleTask/LMF.py``, after github.com/Justin1904/Low-rank-Multimodal-Fusion) and its
trainer, with the sizes of its ``config_regression.json`` MOSI entry. Read, not copied.

LMF computes what TFN's first post-fusion layer would compute on the outer-product tensor,
with that layer's weight constrained to rank ``rank``: for each modality m, [1, h_m] is
projected by ``rank`` factors W_m^(r) of shape (n_m + 1, out); the projections are multiplied
elementwise across modalities and the ``rank`` products are summed with learned weights, plus
a bias. The tensor is never formed. Output: one value (unbounded), or K logits with
``n_classes = K`` (cross-entropy). The unimodal subnetworks are TFN's (``tfn.py``): a one-layer
LSTM for text (its last state through a linear layer to ``text_out``), and BatchNorm, dropout,
three Linear+ReLU on the time-averaged audio and vision. With a subset of modalities (e.g.
audio+vision only) the product runs over the modalities the dataset has.

Follows MMSA (MOSI): text_hidden 128, audio_hidden 16, vision_hidden 128, text_out =
text_hidden // 2 = 64, rank 3, audio/vision dropout 0.3, factor init Xavier-normal and zero
bias, L1 loss, lr 1e-3 for the subnetworks and ``factor_lr`` 1e-3 for the factors, batch 64,
Adam weight decay 0.005. MMSA's config gives text dropout 0.3, but its ``TextSubNet`` sets it
to 0 for a one-layer LSTM (our default ``text_dropout`` is that effective 0.0), and its
post-fusion dropout (0.3) is defined but never applied, so we have none.

Weight decay: the engine's optimiser is AdamW (decoupled decay). MMSA's is Adam with
``weight_decay=0.005``, an L2 penalty in the gradient; we reproduce it as the loss term
``l2 / 2 * sum ||w||^2`` (reported as ``l2``) over every trainable parameter but the missing
vectors, and leave the engine's ``weight_decay`` at 0.

Ours (masks and missing data, and one fix):

- Audio/vision are averaged over their observed steps only (MMSA averages the padded sequence,
  padding included); the text LSTM reads only observed steps, packed (MMSA reads the state after
  the padding). BatchNorm statistics come from samples that have the modality.
- A modality that is absent for a sample is never read: its subnetwork output is a learned
  "missing" vector (``subnets.missing.<m>``): text_out + audio_hidden + vision_hidden = 208
  parameters at the defaults, the only ones we add; our count is MMSA's + 208.
- MMSA's optimiser is built from ``parameters()[:3]`` and ``[5:]``, which leaves the rank
  weights and the output bias out: they stay at their initial values. We train them, as the
  paper does.

Text path of the reported numbers: precomputed text features (``text_encoder=features``,
the default) everywhere in BENCHMARKS.md; ``--set text_encoder=NAME`` fine-tunes a pretrained
encoder on the transcripts instead (models/layers/text.py).

``--preset paper`` is MMSA 2.2.1's MOSI entry written out (``PRESETS``, with the config lines);
it equals the default but for Adam in place of AdamW (the same update without weight
decay) and a 200-epoch cap (MMSA has none; msakit's default is 30).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from msakit.data.batch import Batch
from msakit.models.base import ModelConfig, MSAModel, Output, register_model
from msakit.models.tfn import UnimodalSubnets, with_one


@dataclass
class LMFConfig(ModelConfig):
    text_hidden: int = 128
    audio_hidden: int = 16
    vision_hidden: int = 128  # also used for any other non-text modality
    text_out: int = 64  # MMSA: text_hidden // 2
    rank: int = 3
    audio_dropout: float = 0.3
    vision_dropout: float = 0.3
    text_dropout: float = 0.0  # MMSA: 0.3 in the config, 0 in effect (one-layer TextSubNet)
    factor_lr: float = 1e-3  # learning rate of the modality factors
    l2: float = 0.005  # MMSA's Adam weight_decay, as a coupled L2 term in the loss
    lr: float = 1e-3
    batch_size: int = 64
    weight_decay: float = 0.0  # the engine's decoupled (AdamW) decay

    # MMSA 2.2.1 (thuiar/MMSA @ a94e65d): src/MMSA/config/config_regression.json (lmf, mosi;
    # line numbers of the repository's file) and trains/singleTask/LMF.py
    PRESETS: ClassVar[dict[str, dict]] = {"paper": {
        "text_hidden": 128, "audio_hidden": 16, "vision_hidden": 128,  # :130
        "text_out": 64, "rank": 3,  # models/singleTask/LMF.py: text_hidden // 2; :132
        "audio_dropout": 0.3, "vision_dropout": 0.3, "text_dropout": 0.0,  # :131 (text: 0 in effect)
        "optimizer": "adam", "lr": 1e-3, "factor_lr": 1e-3, "l2": 0.005,  # :134-136; LMF.py:20-22
        "weight_decay": 0.0,
        "batch_size": 64, "patience": 8,  # :133, :126 early_stop
        "epochs": 200,  # MMSA has no epoch cap (it stops early); 200 is ours
        "default_corrupt": None,
    }}


@register_model("lmf", LMFConfig)
class LMF(MSAModel):
    """LMF (Liu et al. 2018): low-rank modality-specific factors instead of the fusion tensor."""

    def __init__(self, dims: dict[str, int], config: LMFConfig, n_classes: int = 0) -> None:
        super().__init__(dims, config, n_classes)
        c = config
        c.check()
        self.mods = tuple(self.dims)  # canonical order
        self.subnets = UnimodalSubnets.from_config(self.dims, c)
        self.factors = nn.ParameterDict(
            {
                m: nn.Parameter(torch.empty(c.rank, self.subnets.size[m] + 1, self.out_dim))
                for m in self.mods
            }
        )
        self.fusion_weights = nn.Parameter(torch.empty(1, c.rank))
        self.fusion_bias = nn.Parameter(torch.zeros(1, self.out_dim))
        for f in self.factors.values():
            nn.init.xavier_normal_(f)
        nn.init.xavier_normal_(self.fusion_weights)

    def param_groups(self) -> list[dict]:
        factors = [p for p in self.factors.values() if p.requires_grad]
        ids = {id(p) for p in factors}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in ids]
        return [{"params": factors, "lr": self.config.factor_lr}, {"params": rest}]

    def fuse(self, hs: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, rank, out): the elementwise product over modalities of [1, h_m] @ W_m^(r)."""
        z = None
        for m in self.mods:
            p = torch.einsum("bn,rno->bro", with_one(hs[m]), self.factors[m])
            z = p if z is None else z * p
        return z

    def forward(self, batch: Batch) -> Output:
        z = self.fuse(self.subnets(batch))
        out = torch.einsum("r,bro->bo", self.fusion_weights[0], z) + self.fusion_bias
        return Output(self.head_output(out), {"fused": z})

    def loss(self, out: Output, batch: Batch) -> dict[str, torch.Tensor]:
        reg = self.regression_loss(out.pred, batch.y)
        terms = {"total": reg, "pred": reg}
        if self.config.l2 > 0:
            sq = sum(
                (p * p).sum()
                for n, p in self.named_parameters()
                if p.requires_grad
                and not n.startswith(("subnets.missing.", "text_encoder."))  # LMF's own weights
            )
            terms["l2"] = 0.5 * self.config.l2 * sq
            terms["total"] = reg + terms["l2"]
        return terms
