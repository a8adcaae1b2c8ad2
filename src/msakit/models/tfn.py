"""TFN: the Tensor Fusion Network.

Zadeh, Chen, Poria, Cambria, Morency, "Tensor Fusion Network for Multimodal Sentiment Analysis",
EMNLP 2017. Reference code: MMSA 2.2.1's ``TFN`` (``models/singleTask/TFN.py`` and
``models/subNets/FeatureNets.py``, after github.com/A2Zadeh/TensorFusionNetwork), with the sizes
of its ``config_regression.json`` MOSI entry. Read, not copied.

Blocks, in forward order:

1. Unimodal subnetworks. Text: a one-layer LSTM whose last hidden state goes through dropout
   and a linear layer to ``text_out`` (MMSA's ``TextSubNet``). Audio and vision (and any other
   non-text modality): the sequence is averaged over time, then BatchNorm, dropout and three
   Linear+ReLU layers of width ``<m>_hidden`` (MMSA's ``SubNet``).
2. Tensor fusion: a 1 is appended to each modality's vector and their outer product is
   flattened, so the tensor holds every unimodal, bimodal and trimodal interaction; its size is
   the product of (hidden + 1) over the dataset's modalities ((32+1)(32+1)(128+1) = 140,481 at
   MOSI's defaults). With a subset of modalities (e.g. audio+vision only, ICT-MMMO) the product
   spans exactly the modalities the dataset has.
3. Post-fusion network: dropout, Linear+ReLU, Linear+ReLU (``post_fusion_dim``), Linear to one
   value, or K logits with ``n_classes = K`` (cross-entropy). The regression output is bounded
   as in MMSA: ``lo + (hi - lo) * sigmoid(z)``.

Follows MMSA (MOSI): text_hidden 128, audio_hidden 32, vision_hidden 128, text_out 32,
post_fusion_dim 64, dropouts 0.3 (audio, vision) and 0.5 (post-fusion), L1 loss, lr 1e-3,
batch 32, no weight decay, output bounded to (-3, 3) on MOSI. MMSA's config gives the text
subnet dropout 0.3, but its ``TextSubNet`` sets dropout to 0 for a one-layer LSTM, so the
effective value, and our default ``text_dropout``, is 0.0.

Ours (masks and missing data):

- Audio/vision are averaged over their *observed* steps only (MMSA's data loader averages over
  the whole padded sequence, padding included, so a short clip is shrunk toward zero).
- The text LSTM reads only observed steps: they are moved to the front in time order and the
  batch is packed, so the last hidden state is the one after the last observed token (MMSA runs
  the LSTM over the padded sequence and reads the state after the padding).
- A modality that is absent for a sample (not present, or no observed step) is never read: its
  subnetwork output is replaced by a learned "missing" vector (``subnets.missing.<m>``, zeros at init,
  i.e. only the appended 1 survives). These are the only parameters we add: text_out +
  audio_hidden + vision_hidden = 192 at the defaults.
- BatchNorm statistics in training come from the samples that have the modality (absent rows
  would otherwise bias them); with fewer than two such samples the running statistics are used.
- The output bound is a buffer, (-3, 3) until training starts, then the dataset's label range
  (MMSA hard-codes (-3, 3) for every dataset, SIMS's [-1, 1] included); ``bounded=false``
  gives an unbounded linear output. MMSA stores the bound as two frozen parameters; ours are
  buffers, so our parameter count is MMSA's - 2 + 192.

Text path of the reported numbers: precomputed text features (``text_encoder=features``,
the default) everywhere in BENCHMARKS.md; ``--set text_encoder=NAME`` fine-tunes a pretrained
encoder on the transcripts instead (models/layers/text.py).

``--preset paper`` is MMSA 2.2.1's MOSI entry written out (``PRESETS``, with the config lines);
it equals the default but for Adam in place of AdamW (the same update without weight
decay) and a 200-epoch cap (MMSA has none; msakit's default is 30).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from msakit.data.batch import Batch
from msakit.models.base import ModelConfig, MSAModel, Output, register_model
from msakit.models.layers import masked_mean, rnn_last


@dataclass
class TFNConfig(ModelConfig):
    text_hidden: int = 128
    audio_hidden: int = 32
    vision_hidden: int = 128  # also used for any other non-text modality
    text_out: int = 32
    post_fusion_dim: int = 64
    audio_dropout: float = 0.3
    vision_dropout: float = 0.3
    text_dropout: float = 0.0  # MMSA: 0.3 in the config, 0 in effect (one-layer TextSubNet)
    post_fusion_dropout: float = 0.5
    bounded: bool = True  # regression output lo + (hi - lo) * sigmoid(z), as MMSA
    lr: float = 1e-3
    batch_size: int = 32
    weight_decay: float = 0.0

    # MMSA 2.2.1 (thuiar/MMSA @ a94e65d): src/MMSA/config/config_regression.json (tfn, mosi;
    # line numbers of the repository's file) and trains/singleTask/TFN.py
    PRESETS: ClassVar[dict[str, dict]] = {"paper": {
        "text_hidden": 128, "audio_hidden": 32, "vision_hidden": 128, "text_out": 32,
        "post_fusion_dim": 64,  # :88-90
        "audio_dropout": 0.3, "vision_dropout": 0.3, "text_dropout": 0.0,  # :91 (text: 0 in effect)
        "post_fusion_dropout": 0.5,  # :91
        "optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0,  # :93; TFN.py:20
        "batch_size": 32, "patience": 8,  # :92, :84 early_stop
        "epochs": 200,  # MMSA has no epoch cap (it stops early); 200 is ours
        "default_corrupt": None,
    }}


# ------------------------------------------------------------------ shared with lmf.py
class TextSubNet(nn.Module):
    """One-layer LSTM over the observed steps only; last hidden state -> dropout -> Linear.

    The state after each row's last observed step, with its observed steps in time order
    (:func:`~msakit.models.layers.rnn_last`), so neither padding nor dropped steps inside the
    sequence reach it. Rows with nothing observed return a value the caller must replace (it
    depends on no input content)."""

    def __init__(self, in_size: int, hidden: int, out: int, dropout: float) -> None:
        super().__init__()
        self.rnn = nn.LSTM(in_size, hidden, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.linear_1 = nn.Linear(hidden, out)

    def forward(self, x: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        return self.linear_1(self.dropout(rnn_last(self.rnn, x, obs)))


class SubNet(nn.Module):
    """BatchNorm -> dropout -> 3 x (Linear, ReLU) on a pooled (B, D) vector.

    ``has`` (B,) marks rows whose modality exists; in training the BatchNorm statistics are
    taken over those rows only (running statistics when fewer than two). Other rows return a
    value the caller must replace."""

    def __init__(self, in_size: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(in_size)
        self.drop = nn.Dropout(dropout)
        self.linear_1 = nn.Linear(in_size, hidden)
        self.linear_2 = nn.Linear(hidden, hidden)
        self.linear_3 = nn.Linear(hidden, hidden)

    def _norm(self, x: torch.Tensor, has: torch.Tensor) -> torch.Tensor:
        bn = self.norm
        if self.training and int(has.sum()) > 1:
            out = x.new_zeros(x.shape)
            out[has] = bn(x[has])
            return out
        return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)

    def forward(self, x: torch.Tensor, has: torch.Tensor) -> torch.Tensor:
        h = self.drop(self._norm(x, has))
        h = F.relu(self.linear_1(h))
        h = F.relu(self.linear_2(h))
        return F.relu(self.linear_3(h))


class UnimodalSubnets(nn.Module):
    """MMSA's pre-fusion subnetworks for every modality of ``dims`` (canonical order), with a
    learned missing vector per modality for samples that lack it. ``forward`` returns
    {m: (B, size[m])}."""

    def __init__(
        self, dims: dict[str, int], hidden: dict[str, int], text_out: int,
        dropout: dict[str, float],
    ) -> None:
        super().__init__()
        self.mods = tuple(dims)
        self.size = {m: text_out if m == "text" else hidden[m] for m in self.mods}
        self.nets = nn.ModuleDict(
            {
                m: TextSubNet(dims[m], hidden[m], text_out, dropout[m])
                if m == "text"
                else SubNet(dims[m], hidden[m], dropout[m])
                for m in self.mods
            }
        )
        self.missing = nn.ParameterDict(
            {m: nn.Parameter(torch.zeros(self.size[m])) for m in self.mods}
        )

    @classmethod
    def from_config(cls, dims: dict[str, int], c: Any) -> UnimodalSubnets:
        """Sizes from a TFN/LMF config's ``<m>_hidden``, ``<m>_dropout`` and ``text_out``."""
        mods = tuple(dims)
        return cls(dims, per_modality(c, mods, "hidden"), c.text_out, per_modality(c, mods, "dropout"))

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        out = {}
        for m in self.mods:
            obs = batch.observed(m)
            has = obs.any(1)
            if m == "text":
                h = self.nets[m](batch.x[m], obs)
            else:
                h = self.nets[m](masked_mean(batch.x[m], obs), has)
            out[m] = torch.where(has.unsqueeze(1), h, self.missing[m].expand_as(h))
        return out


def per_modality(c: Any, mods: tuple[str, ...], key: str) -> dict[str, Any]:
    """``c.<m>_<key>`` for each modality (vision's value for modalities beyond t/a/v)."""
    return {m: getattr(c, f"{m}_{key}", getattr(c, f"vision_{key}")) for m in mods}


def with_one(h: torch.Tensor) -> torch.Tensor:
    """(B, n) -> (B, n + 1) with a leading 1, as TFN/LMF append before fusing."""
    return torch.cat([h.new_ones(h.shape[0], 1), h], dim=1)


def tensor_fusion(hs: list[torch.Tensor]) -> torch.Tensor:
    """Flattened outer product of [1, h_m] over the list: (B, prod(n_m + 1)), first modality
    slowest."""
    z = with_one(hs[0])
    for h in hs[1:]:
        z = torch.bmm(z.unsqueeze(2), with_one(h).unsqueeze(1)).flatten(1)  # exact products
    return z


# ------------------------------------------------------------------ the model
@register_model("tfn", TFNConfig)
class TFN(MSAModel):
    """TFN (Zadeh et al. 2017): outer-product tensor fusion of unimodal subnetworks, masked."""

    def __init__(self, dims: dict[str, int], config: TFNConfig, n_classes: int = 0) -> None:
        super().__init__(dims, config, n_classes)
        c = config
        c.check()
        self.mods = tuple(self.dims)  # canonical order
        self.subnets = UnimodalSubnets.from_config(self.dims, c)
        n_fused = 1
        for m in self.mods:
            n_fused *= self.subnets.size[m] + 1
        self.fusion_size = n_fused
        self.post_fusion_dropout = nn.Dropout(c.post_fusion_dropout)
        self.post_fusion_layer_1 = nn.Linear(n_fused, c.post_fusion_dim)
        self.post_fusion_layer_2 = nn.Linear(c.post_fusion_dim, c.post_fusion_dim)
        self.post_fusion_layer_3 = nn.Linear(c.post_fusion_dim, self.out_dim)
        self.register_buffer("output_range", torch.tensor([-3.0, 3.0]))

    def on_train_epoch_start(self, epoch: int, engine: Any) -> None:
        lr = getattr(getattr(engine, "dataset", None), "label_range", None)
        if lr is not None and self.n_classes == 0:
            self.output_range.copy_(torch.tensor([float(lr[0]), float(lr[1])]))

    def forward(self, batch: Batch) -> Output:
        hs = self.subnets(batch)
        z = tensor_fusion([hs[m] for m in self.mods])
        y = F.relu(self.post_fusion_layer_1(self.post_fusion_dropout(z)))
        y = F.relu(self.post_fusion_layer_2(y))
        out = self.post_fusion_layer_3(y)
        if self.n_classes == 0 and self.config.bounded:
            lo, hi = self.output_range[0], self.output_range[1]
            out = lo + (hi - lo) * torch.sigmoid(out)
        return Output(self.head_output(out), {"fused": z})
