"""MISA: modality-invariant and -specific representations.

Hazarika, Zimmermann, Poria, "MISA: Modality-Invariant and -Specific Representations for
Multimodal Sentiment Analysis", ACM MM 2020. Reference code: MMSA 2.2.1's ``MISA``
(``models/singleTask/MISA.py`` and ``trains/singleTask/MISA.py``, after
github.com/declare-lab/MISA), with the sizes of its ``config_regression.json`` MOSI entry. Read,
not copied.

Blocks, in forward order:

1. Utterance vectors. Text (MMSA: BERT's output; here the dataset's text features, or the text
   encoder's tokens): the mean over observed steps. Every other modality (its observed steps,
   averaged into ``max_steps`` windows when longer; see below): a bidirectional LSTM, a
   LayerNorm on its outputs, a second bidirectional LSTM; the final states of both, both
   directions, concatenated (4 x the LSTM width, which equals the modality's feature size as in
   MMSA).
2. Projection of each utterance vector to ``hidden`` (Linear, ReLU, LayerNorm): u_m.
3. Private encoders (one Linear+Sigmoid per modality) and one shared encoder (Linear+Sigmoid,
   the same weights for every modality): p_m = private_m(u_m), s_m = shared(u_m).
4. Fusion: the 2M vectors [p_m..., s_m...] pass one post-norm transformer layer (``heads``
   heads, feed-forward ``fusion_ff``, dropout ``fusion_dropout``: PyTorch's
   ``nn.TransformerEncoderLayer`` defaults, as MMSA), are concatenated, then Linear to
   M x hidden, dropout, ReLU, Linear to one value (K logits with ``n_classes = K``).

Losses (all named and logged), as MMSA's trainer: ``pred`` (MSE; cross-entropy when
classifying) + ``w_diff`` x ``diff`` + ``w_sim`` x ``similarity`` + ``w_recon`` x
``reconstruction``, where

- ``similarity`` is the central moment discrepancy (CMD, ``cmd_moments`` = 5 moments) between
  the shared vectors of every modality pair, averaged over pairs;
- ``diff`` is the soft orthogonality ||A^T B||^2 (mean over entries, rows centred over the batch
  and scaled to unit norm) between p_m and s_m of each modality and between the private vectors
  of every pair, summed;
- ``reconstruction`` is the MSE between u_m and recon_m(p_m + s_m), averaged over modalities.

Follows MMSA (MOSI): hidden 128, dropout 0.2, CMD similarity (``use_cmd_sim``), weights
diff 0.1 / sim 0.3 / recon 1.0, MSE, Adam lr 1e-4 without weight decay, batch 16, gradients of 2
batches accumulated per step (``update_epochs``), clipping by value at 0.8.

Where we differ from MMSA:

- MMSA packs every modality with the *text* lengths (BERT tokens, <= 50), so the audio and
  video LSTMs read only the first <= 50 frames of 375/500-frame unaligned sequences, padding
  included when the clip is shorter. Here each LSTM reads its own modality's observed steps
  only (packed, in time order; dropped steps inside a sequence are skipped), all of them: a
  sequence longer than ``max_steps`` = 50 is first averaged into 50 windows of its observed
  steps (``layers.window_mean``: the window size follows each sample's own length), so the
  LSTMs still run <= 50 steps, as MMSA's, but over the whole clip. ``max_steps=None`` (the
  ``paper`` preset) feeds every observed step, about 8x the training time at MOSI's unaligned
  lengths (CPU time per step, batch 32, 375/500 frames: 0.50 s against 0.061 s with windows;
  MMSA's first-50-frames model 0.067 s, measured on the same machine).
- A modality absent for a sample is never read: its projected vector u_m is replaced by a
  learned "missing" vector (``missing.<m>``, ``hidden`` parameters each; 3 x 128 = 384 at MOSI
  shapes, the only parameters we add), and the auxiliary losses use only the samples where the
  modalities they compare are present (an empty comparison contributes 0).
- Dropped: MMSA's ``tlayer_norm`` (a LayerNorm over 2 x 768 built for a text LSTM that its
  BERT path never runs; 3,072 parameters) and ``sp_discriminator`` (its output is computed
  but no loss uses it, so it never trains; 516 parameters). MMSA's adversarial ``discriminator``
  (built only when ``use_cmd_sim`` is false, a path whose loss its trainer cannot compute) is
  not offered. Our count at MOSI shapes: MMSA's 1,138,033 - 3,072 - 516 + 384 = 1,134,829.
- MMSA sums the 2 accumulated batches' gradients; the engine averages them (the same Adam
  update up to the clipping threshold, which then applies to the mean).

Text path of the reported numbers: precomputed text features (``text_encoder=features``, the
default); ``--set text_encoder=NAME`` fine-tunes a pretrained encoder on the transcripts
(models/layers/text.py).

``--preset paper`` is MMSA's MOSI entry written out (``PRESETS``, with the config lines); it
equals the default but for ``max_steps=None`` (every observed frame), a 200-epoch cap (MMSA has
none; it stops early) and the text encoder's learning rate (MMSA fine-tunes BERT in the same
Adam group at 1e-4).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from msakit.data.batch import Batch
from msakit.errors import ConfigError
from msakit.models.base import ModelConfig, MSAModel, Output, register_model
from msakit.models.layers import masked_mean, pack_observed, window_mean


@dataclass
class MISAConfig(ModelConfig):
    hidden: int = 128  # MMSA hidden_size: the shared/private space
    dropout: float = 0.2  # after the first fusion layer
    heads: int = 2  # the fusion transformer layer (MMSA: nhead=2)
    fusion_ff: int = 2048  # nn.TransformerEncoderLayer's default feed-forward width
    fusion_dropout: float = 0.1  # nn.TransformerEncoderLayer's default dropout
    cmd_moments: int = 5
    # audio/vision sequences longer than this are averaged (mask-aware) into this many windows
    # before the LSTMs (ours, for speed); None: the LSTMs read every observed step
    max_steps: int | None = 50
    w_diff: float = 0.1
    w_sim: float = 0.3
    w_recon: float = 1.0
    loss: str = "mse"
    optimizer: str = "adam"
    lr: float = 1e-4
    weight_decay: float = 0.0
    batch_size: int = 16
    accumulate: int = 2
    grad_clip: float = 0.8
    grad_clip_mode: str = "value"

    # MMSA 2.2.1 (thuiar/MMSA @ a94e65d): src/MMSA/config/config_regression.json (misa, mosi;
    # line numbers of the repository's file), models/ and trains/singleTask/MISA.py
    PRESETS: ClassVar[dict[str, dict]] = {"paper": {
        "hidden": 128, "dropout": 0.2,  # :636-637
        "heads": 2, "fusion_ff": 2048, "fusion_dropout": 0.1,  # models/singleTask/MISA.py:157
        "cmd_moments": 5,  # trains/singleTask/MISA.py:201-203
        "max_steps": None,  # every observed step (MMSA: the first <= 50, see the docstring)
        "w_diff": 0.1, "w_sim": 0.3, "w_recon": 1.0,  # :639-642 (use_cmd_sim :630)
        "loss": "mse",  # trains/singleTask/MISA.py:16
        "optimizer": "adam", "lr": 1e-4, "weight_decay": 0.0,  # :635, :644; trains:24
        "text_lr": 1e-4,  # trains:24: BERT in the one Adam group
        "batch_size": 16, "accumulate": 2,  # :634, :628 update_epochs
        "grad_clip": 0.8, "grad_clip_mode": "value",  # :643; trains:78
        "patience": 8,  # :627 early_stop
        "epochs": 200,  # MMSA has no epoch cap (it stops early); 200 is ours
        "default_corrupt": None,
    }}

    def check(self) -> None:
        if self.hidden % self.heads:
            raise ConfigError(f"misa: hidden={self.hidden} must be divisible by heads={self.heads}")


class SequenceExtractor(nn.Module):
    """MMSA's ``extract_features``: BiLSTM -> LayerNorm on its outputs -> BiLSTM over the
    observed steps; returns [h1 fwd, h2 fwd, h1 bwd, h2 bwd] (B, 4 x hidden)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.rnn1 = nn.LSTM(dim, hidden, bidirectional=True, batch_first=True)
        self.norm = nn.LayerNorm(2 * hidden)
        self.rnn2 = nn.LSTM(2 * hidden, hidden, bidirectional=True, batch_first=True)

    def forward(self, x: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        out1, (h1, _) = self.rnn1(pack_observed(x, obs))
        # the LayerNorm acts per step, so it can run on the packed steps directly
        _, (h2, _) = self.rnn2(out1._replace(data=self.norm(out1.data)))
        h = torch.cat([h1, h2], dim=2)  # (2 directions, B, 2 x hidden)
        return h.transpose(0, 1).reshape(x.shape[0], -1)


def diff_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Soft orthogonality of two (N, H) batches: rows centred over the batch and scaled to unit
    norm (the norm treated as a constant), then the mean of (A^T B)^2."""

    def unit(t: torch.Tensor) -> torch.Tensor:
        t = t - t.mean(0, keepdim=True)
        return t / (t.norm(dim=1, keepdim=True).detach() + 1e-6)

    return (unit(a).t() @ unit(b)).pow(2).mean()


def cmd(a: torch.Tensor, b: torch.Tensor, moments: int) -> torch.Tensor:
    """Central moment discrepancy (Zellinger et al. 2017) of two (N, H) batches: the distance
    of their means plus that of their central moments of order 2..``moments``."""
    ma, mb = a.mean(0), b.mean(0)
    ca, cb = a - ma, b - mb
    total = torch.linalg.vector_norm(ma - mb)  # its gradient at 0 is 0, not NaN
    for k in range(2, moments + 1):
        total = total + torch.linalg.vector_norm(ca.pow(k).mean(0) - cb.pow(k).mean(0))
    return total


@register_model("misa", MISAConfig)
class MISA(MSAModel):
    """MISA (Hazarika et al. 2020): shared and private subspaces with CMD/orthogonality losses.

    Fused by one transformer layer; a reconstruction loss keeps both subspaces informative
    (MMSA sizes)."""

    def __init__(self, dims: dict[str, int], config: MISAConfig, n_classes: int = 0) -> None:
        super().__init__(dims, config, n_classes)
        c = config
        c.check()
        self.mods = tuple(self.dims)  # canonical order
        h, n = c.hidden, len(self.mods)
        # utterance vectors: text pooled, every other modality through the two BiLSTMs whose
        # width is the modality's feature size (MMSA's hidden_sizes)
        self.extract = nn.ModuleDict(
            {m: SequenceExtractor(self.dims[m], self.dims[m]) for m in self.mods if m != "text"}
        )
        size = {m: self.dims[m] if m == "text" else 4 * self.dims[m] for m in self.mods}
        self.project = nn.ModuleDict(
            {m: nn.Sequential(nn.Linear(size[m], h), nn.ReLU(), nn.LayerNorm(h)) for m in self.mods}
        )
        self.missing = nn.ParameterDict({m: nn.Parameter(torch.zeros(h)) for m in self.mods})
        self.private = nn.ModuleDict(
            {m: nn.Sequential(nn.Linear(h, h), nn.Sigmoid()) for m in self.mods}
        )
        self.shared = nn.Sequential(nn.Linear(h, h), nn.Sigmoid())
        self.recon = nn.ModuleDict({m: nn.Linear(h, h) for m in self.mods})
        # fusion: one post-norm transformer layer over the 2M vectors (no mask: all exist)
        self.fusion_layer = nn.TransformerEncoderLayer(
            h, c.heads, c.fusion_ff, c.fusion_dropout, batch_first=True
        )
        self.fusion = nn.Sequential(
            nn.Linear(2 * n * h, n * h), nn.Dropout(c.dropout), nn.ReLU(),
            nn.Linear(n * h, self.out_dim),
        )

    def forward(self, batch: Batch) -> Output:
        u, has = {}, {}
        for m in self.mods:
            obs = batch.observed(m)
            has[m] = obs.any(1)
            if m == "text":
                v = masked_mean(batch.x[m], obs)
            else:
                x = batch.x[m]
                if self.config.max_steps is not None:
                    x, obs = window_mean(x, obs, self.config.max_steps)
                v = self.extract[m](x, obs)
            u[m] = torch.where(has[m].unsqueeze(1), self.project[m](v), self.missing[m])
        private = {m: self.private[m](u[m]) for m in self.mods}
        shared = {m: self.shared(u[m]) for m in self.mods}
        tokens = torch.stack([private[m] for m in self.mods] + [shared[m] for m in self.mods], 1)
        fused = self.fusion_layer(tokens).flatten(1)  # (B, 2M x hidden), token-major
        pred = self.head_output(self.fusion(fused))
        return Output(pred, {"u": u, "private": private, "shared": shared, "has": has})

    def loss(self, out: Output, batch: Batch) -> dict[str, torch.Tensor]:
        c = self.config
        u, p, s, has = (out.extras[k] for k in ("u", "private", "shared", "has"))
        zero = out.pred.new_zeros(())
        sim, n_pairs = zero, 0
        diff = zero
        for a, b in combinations(self.mods, 2):
            both = has[a] & has[b]
            n_pairs += 1
            if bool(both.any()):
                sim = sim + cmd(s[a][both], s[b][both], c.cmd_moments)
                diff = diff + diff_loss(p[a][both], p[b][both])
        sim = sim / max(1, n_pairs)
        recon = zero
        for m in self.mods:
            if bool(has[m].any()):
                diff = diff + diff_loss(p[m][has[m]], s[m][has[m]])
                rec = self.recon[m](p[m][has[m]] + s[m][has[m]])
                recon = recon + F.mse_loss(rec, u[m][has[m]])
        recon = recon / len(self.mods)
        pred = self.regression_loss(out.pred, batch.y)
        total = pred + c.w_diff * diff + c.w_sim * sim + c.w_recon * recon
        return {"total": total, "pred": pred, "diff": diff, "similarity": sim,
                "reconstruction": recon}
