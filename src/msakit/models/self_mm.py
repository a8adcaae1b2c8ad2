"""Self-MM: self-supervised multi-task learning with generated unimodal labels.

Yu, Xu, Yuan, Wu, "Learning Modality-Specific Representations with Self-Supervised Multi-Task
Learning for Multimodal Sentiment Analysis", AAAI 2021. Reference code: MMSA 2.2.1's ``SELF_MM``
(``models/multiTask/SELF_MM.py`` and ``trains/multiTask/SELF_MM.py``, after
github.com/thuiar/Self-MM), with the sizes of its ``config_regression.json`` MOSI entry. Read,
not copied.

Blocks, in forward order:

1. Unimodal representations. Text (MMSA: BERT's [CLS] output): the mean of the observed text
   steps by default (``text_pool=mean``), or the first observed step (``text_pool=first``, the
   [CLS] position when a text encoder's tokens are read); no parameters, so its width is the
   text feature size (768 at MOSI shapes). Audio and vision (and any other modality): a
   one-layer LSTM over the observed steps, its last state through dropout and a linear layer
   (MMSA's ``AuViSubNet``, which is tfn.py's ``TextSubNet``: reused).
2. Fusion head on the concatenation: dropout, Linear+ReLU (the fusion feature), Linear+ReLU,
   Linear to one value (K logits with ``n_classes = K``): the prediction.
3. One head of the same shape per modality (dropout, Linear+ReLU = that modality's feature,
   Linear+ReLU, Linear): the unimodal predictions, used only in training.

ULGM, the unimodal label generation module (the paper's Sec. 3.3 and Algorithm 1, as MMSA):

- Label memory: one row per training sample (``ulgm_labels``: the multimodal label y_m, then
  y_s of each modality, initialised to y_m), with the latest feature of every head
  (``ulgm_feat_<head>``). Both are buffers: saved in ``model.pt`` and in every checkpoint,
  restored by ``load_state_dict`` (which resizes them to the saved memory), so a resumed run
  continues with the labels it had.
- Centres: for each head, the mean stored feature of the training samples whose label (y_m for
  the fusion head, y_s for a modality) is positive, and of those whose label is negative
  (``exclude_zero``: 0 belongs to neither, MMSA's MOSI setting). They are computed from the
  whole memory before each training batch's update, i.e. from the features of every training
  sample at its latest visit.
- From the second epoch on, each training batch moves y_s of its samples: with the relative
  distances delta = (d_neg - d_pos) / d_pos of a sample's fusion and modality features to their
  centres and alpha = delta_s / delta_m, the new label is 0.5 alpha y_m + 0.5 (y_m + delta_s -
  delta_m), clipped to the label range, and it enters by the momentum rule of epoch n:
  y_s <- (n - 1) / (n + 1) y_s + 2 / (n + 1) y_s_new.
- Losses: ``pred`` = L1(fusion, y_m) and, per modality, ``unimodal_<m>`` = mean of
  tanh(|y_s - y_m|) |pred_s - y_s| with the labels held before the batch's update (zero in the
  first epoch, when y_s = y_m: the unimodal heads start learning in epoch 2, as in MMSA).
- Only training batches read or write the memory: a row is used when the batch's row index and
  sample id match a training sample recorded by ``on_train_epoch_start`` (from the engine's
  training split; ids are stored as 64-bit hashes); anything else (validation or test batches, a
  batch of another dataset) falls back to y_s = y_m and writes nothing, and nothing is written
  in evaluation mode. Predictions never read the memory.

Follows MMSA (MOSI): audio LSTM 16 -> 16, vision LSTM 32 -> 32, LSTM dropout 0, fusion head
128 (dropout 0), text/audio/vision heads 32/16/32 (dropout 0.1/0.1/0), labels clipped to
[-3, 3] (H), exclude_zero, L1, Adam with coupled weight decay 1e-3, learning rates 5e-3 (audio
and vision subnetworks) and 1e-3 (the rest), batch 16, gradients of 4 batches accumulated per
step (``update_epochs``). MMSA builds its heads for a scalar only; ours give K logits when
classifying.

Where we differ from MMSA:

- Audio/vision LSTMs read only observed steps (MMSA: the stored lengths, which is the same on
  complete data; dropped steps inside a sequence are skipped here).
- A modality absent for a sample is never read: its representation is a learned "missing"
  vector (``missing.<m>``: text 768 + audio 16 + vision 32 = 816 parameters at MOSI shapes, the
  only parameters we add; our count is MMSA's 159,332 + 816 = 160,148). Its unimodal loss
  weight is 0 for that sample, its label is not updated and its feature is not stored (the
  centres use each sample's latest observed feature).
- Text defaults to the mean of its steps: MMSA's [CLS] is the first position of BERT's output,
  but precomputed word features (GloVe, or any dataset's) have no summary token;
  ``--preset paper`` uses ``text_pool=first``.
- The label range, its midpoint (0 on MOSI) separating positive from negative samples, and the
  clipping come from the dataset's label range (MMSA: H = 3 on MOSI, 1 on SIMS, pivot 0); the
  update runs on labels centred at the midpoint, which is MMSA's formula on MOSI.
- Classification: the generated labels need signed sentiment scores, so with ``n_classes = K``
  ULGM is off and each unimodal head is trained by cross-entropy on the multimodal class
  (samples where its modality is present).
- The text encoder's group (``--set text_encoder=NAME``) gets ``text_lr`` and the model's
  weight decay (MMSA: 5e-5, decay 1e-3 except biases and LayerNorms).

Text path of the reported numbers: precomputed text features (``text_encoder=features``, the
default).

``--preset paper`` is MMSA's MOSI entry written out (``PRESETS``, with the config lines); it
equals the default but for ``text_pool=first``, ``text_lr`` 5e-5 and a 200-epoch cap (MMSA
has none; it stops early).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from msakit.data.batch import Batch
from msakit.models.base import ModelConfig, MSAModel, Output, register_model
from msakit.models.layers import masked_mean
from msakit.models.tfn import TextSubNet, per_modality

_MIN = 1e-8  # MMSA's guard in the relative distances


@dataclass
class SelfMMConfig(ModelConfig):
    text_pool: str = "mean"  # "mean" of observed text steps or "first" observed ([CLS])
    audio_hidden: int = 16  # LSTM widths (vision's for modalities beyond t/a/v)
    vision_hidden: int = 32
    audio_out: int = 16  # subnetwork outputs
    vision_out: int = 32
    audio_dropout: float = 0.0  # after the LSTM
    vision_dropout: float = 0.0
    post_fusion_dim: int = 128
    post_fusion_dropout: float = 0.0
    text_post_dim: int = 32  # unimodal heads
    audio_post_dim: int = 16
    vision_post_dim: int = 32
    text_post_dropout: float = 0.1
    audio_post_dropout: float = 0.1
    vision_post_dropout: float = 0.0
    exclude_zero: bool = True  # label 0 is neither positive nor negative for the centres
    audio_lr: float = 5e-3
    vision_lr: float = 5e-3
    lr: float = 1e-3
    weight_decay: float = 1e-3
    optimizer: str = "adam"  # MMSA: Adam with weight_decay (L2 in the gradient)
    batch_size: int = 16
    accumulate: int = 4
    loss: str = "l1"

    CHOICES: ClassVar[dict[str, tuple]] = {**ModelConfig.CHOICES, "text_pool": ("mean", "first")}
    # MMSA 2.2.1 (thuiar/MMSA @ a94e65d): src/MMSA/config/config_regression.json (self_mm,
    # mosi; line numbers of the repository's file) and trains/multiTask/SELF_MM.py
    PRESETS: ClassVar[dict[str, dict]] = {"paper": {
        "text_pool": "first",  # models/multiTask/SELF_MM.py:60 (BERT's [CLS])
        "audio_hidden": 16, "vision_hidden": 32,  # :1013-1014 (a/v_lstm_layers 1: :1015-1016)
        "audio_out": 16, "vision_out": 32,  # :1018-1019 (text_out 768 :1017 = BERT's width)
        "audio_dropout": 0.0, "vision_dropout": 0.0,  # :1020-1021
        "post_fusion_dim": 128, "text_post_dim": 32, "audio_post_dim": 16,
        "vision_post_dim": 32,  # :1023-1026
        "post_fusion_dropout": 0.0, "text_post_dropout": 0.1, "audio_post_dropout": 0.1,
        "vision_post_dropout": 0.0,  # :1027-1030
        "exclude_zero": True,  # :998 (H = 3.0 at :1031: MOSI's label range)
        "optimizer": "adam",  # trains/multiTask/SELF_MM.py:89
        "audio_lr": 5e-3, "vision_lr": 5e-3, "lr": 1e-3, "text_lr": 5e-5,  # :1005-1008
        "weight_decay": 1e-3,  # :1009-1012
        "batch_size": 16, "accumulate": 4,  # :1004, :1000 update_epochs
        "loss": "l1",  # trains/multiTask/SELF_MM.py:269-276
        "patience": 8,  # :999 early_stop
        "epochs": 200,  # MMSA has no epoch cap (it stops early); 200 is ours
        "default_corrupt": None,
    }}


def id_hashes(ids: list[str]) -> torch.Tensor:
    """(N,) int64: a stable 64-bit hash of each sample id (the memory's record of its rows)."""
    return torch.tensor(
        [int.from_bytes(hashlib.blake2b(str(i).encode(), digest_size=8).digest(), "little",
                        signed=True) for i in ids],
        dtype=torch.long,
    )


class Head(nn.Module):
    """Dropout -> Linear+ReLU (the feature) -> Linear+ReLU -> Linear; returns both."""

    def __init__(self, in_size: int, dim: int, out: int, dropout: float) -> None:
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.linear_1 = nn.Linear(in_size, dim)
        self.linear_2 = nn.Linear(dim, dim)
        self.linear_3 = nn.Linear(dim, out)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = F.relu(self.linear_1(self.drop(x)))
        return f, self.linear_3(F.relu(self.linear_2(f)))


@register_model("self_mm", SelfMMConfig)
class SelfMM(MSAModel):
    """Self-MM (Yu et al. 2021): unimodal heads trained on self-generated labels (ULGM).

    The label memory holds training samples only and is part of the checkpoint (MMSA sizes)."""

    grad_exempt: ClassVar[dict[str, str]] = {
        "heads.*": "unimodal losses are weighted by tanh|y_s - y_m|, zero until ULGM first "
                   "moves the labels (epoch 2), as in the paper",
    }

    def __init__(self, dims: dict[str, int], config: SelfMMConfig, n_classes: int = 0) -> None:
        super().__init__(dims, config, n_classes)
        c = config
        c.check()
        self.mods = tuple(self.dims)  # canonical order
        self.keys = ("fusion", *self.mods)  # the memory's columns / features
        seq = tuple(m for m in self.mods if m != "text")
        hidden, out = per_modality(c, seq, "hidden"), per_modality(c, seq, "out")
        drop = per_modality(c, seq, "dropout")
        self.subnets = nn.ModuleDict(
            {m: TextSubNet(self.dims[m], hidden[m], out[m], drop[m]) for m in seq}
        )
        self.size = {m: self.dims[m] if m == "text" else out[m] for m in self.mods}
        self.missing = nn.ParameterDict(
            {m: nn.Parameter(torch.zeros(self.size[m])) for m in self.mods}
        )
        self.fusion_head = Head(sum(self.size.values()), c.post_fusion_dim, self.out_dim,
                                c.post_fusion_dropout)
        post_dim = per_modality(c, self.mods, "post_dim")
        post_drop = per_modality(c, self.mods, "post_dropout")
        self.heads = nn.ModuleDict(
            {m: Head(self.size[m], post_dim[m], self.out_dim, post_drop[m]) for m in self.mods}
        )
        self.feat_dims = {"fusion": c.post_fusion_dim, **post_dim}
        # the label memory (ULGM): empty until on_train_epoch_start sees the training split
        n_keys = len(self.keys)
        self.register_buffer("ulgm_ids", torch.zeros(0, dtype=torch.long))
        self.register_buffer("ulgm_labels", torch.zeros(0, n_keys))
        self.register_buffer("ulgm_seen", torch.zeros(0, n_keys, dtype=torch.bool))
        for k in self.keys:
            self.register_buffer(f"ulgm_feat_{k}", torch.zeros(0, self.feat_dims[k]))
        self.register_buffer("ulgm_epoch", torch.zeros((), dtype=torch.long))  # n, 1-based
        self.register_buffer("label_range", torch.tensor([-3.0, 3.0]))

    # ---------------------------------------------------------------- optimiser
    def param_groups(self) -> list[dict]:
        c, groups, taken = self.config, [], set()
        for m, net in self.subnets.items():
            ps = [p for p in net.parameters() if p.requires_grad]
            taken |= {id(p) for p in ps}
            groups.append({"params": ps, "lr": getattr(c, f"{m}_lr", c.vision_lr)})
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in taken]
        return [*groups, {"params": rest}]

    # ---------------------------------------------------------------- forward
    def _text(self, x: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        if self.config.text_pool == "mean":
            return masked_mean(x, obs)
        first = obs.to(torch.uint8).argmax(1)  # the first observed step (0 when none)
        return x[torch.arange(x.shape[0], device=x.device), first]

    def forward(self, batch: Batch) -> Output:
        reps, has = {}, {}
        for m in self.mods:
            obs = batch.observed(m)
            has[m] = obs.any(1)
            h = self._text(batch.x[m], obs) if m == "text" else self.subnets[m](batch.x[m], obs)
            reps[m] = torch.where(has[m].unsqueeze(1), h, self.missing[m])
        f, out = self.fusion_head(torch.cat([reps[m] for m in self.mods], 1))
        features, unimodal = {"fusion": f}, {}
        for m in self.mods:
            features[m], o = self.heads[m](reps[m])
            unimodal[m] = self.head_output(o)
        return Output(self.head_output(out),
                      {"features": features, "unimodal": unimodal, "has": has})

    # ---------------------------------------------------------------- ULGM memory
    def on_train_epoch_start(self, epoch: int, engine: Any) -> None:
        """Set the epoch n of the momentum rule; at the first epoch (or when the memory does
        not hold this training split) fill the memory from the training labels."""
        self.ulgm_epoch.fill_(epoch + 1)
        ds = getattr(engine, "dataset", None)
        if ds is None or self.n_classes:
            return
        if ds.label_range is not None:
            self.label_range.copy_(torch.tensor([float(v) for v in ds.label_range]))
        split = ds.splits["train"]
        ids = id_hashes(split.ids).to(self.ulgm_ids.device)
        if epoch == 0 or self.ulgm_ids.shape != ids.shape or not torch.equal(self.ulgm_ids, ids):
            self.reset_memory(ids, torch.as_tensor(split.y, dtype=torch.float32))

    @torch.no_grad()
    def reset_memory(self, ids: torch.Tensor, y: torch.Tensor) -> None:
        """Memory for training samples ``ids`` (hashes) with labels ``y``: every y_s = y_m,
        no stored features."""
        dev = self.label_range.device
        n = len(ids)
        self.ulgm_ids = ids.to(dev).clone()
        self.ulgm_labels = y.to(dev).reshape(n, 1).repeat(1, len(self.keys)).clone()
        self.ulgm_seen = torch.zeros(n, len(self.keys), dtype=torch.bool, device=dev)
        for k in self.keys:
            setattr(self, f"ulgm_feat_{k}", torch.zeros(n, self.feat_dims[k], device=dev))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # the saved memory has as many rows as its training split: take its size first
        for name, cur in list(self.named_buffers(recurse=False)):
            t = state_dict.get(prefix + name)
            if name.startswith("ulgm_") and t is not None and t.shape != cur.shape:
                setattr(self, name, torch.empty(t.shape, dtype=cur.dtype, device=cur.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def memory_rows(self, batch: Batch) -> torch.Tensor:
        """(B,) the memory row of each sample, -1 where it is not a recorded training sample
        (row index and id hash must both match)."""
        n = self.ulgm_ids.shape[0]
        dev = self.ulgm_ids.device
        if n == 0 or batch.index is None:
            return torch.full((batch.size,), -1, dtype=torch.long, device=dev)
        idx = batch.index.to(dev).long()
        ok = (idx >= 0) & (idx < n)
        ok &= self.ulgm_ids[idx.clamp(0, n - 1)] == id_hashes(batch.ids).to(dev)
        return torch.where(ok, idx, torch.full_like(idx, -1))

    def centers(self) -> dict[str, tuple[torch.Tensor, torch.Tensor] | None]:
        """Per head: (positive centre, negative centre) of the stored features of training
        samples on either side of the label midpoint; None when a side has none."""
        pivot = self.label_range.mean()
        res = {}
        for j, k in enumerate(self.keys):
            lab, seen = self.ulgm_labels[:, j], self.ulgm_seen[:, j]
            pos = seen & ((lab > pivot) if self.config.exclude_zero else (lab >= pivot))
            neg = seen & (lab < pivot)
            feat = getattr(self, f"ulgm_feat_{k}")
            res[k] = (feat[pos].mean(0), feat[neg].mean(0)) if pos.any() and neg.any() else None
        return res

    @torch.no_grad()
    def update_memory(self, out: Output, rows: torch.Tensor) -> None:
        """One training batch's ULGM step: from epoch 2, move y_s of its samples toward the
        labels their distances to the centres imply (momentum rule); then store its features."""
        known = rows >= 0
        if not bool(known.any()):
            return
        r = rows[known]
        # fp32 whatever the autocast: the memory and the label updates keep full precision
        feats = {k: v.detach().float()[known] for k, v in out.extras["features"].items()}
        has = {m: v[known] for m, v in out.extras["has"].items()}
        lo, hi = float(self.label_range[0]), float(self.label_range[1])
        pivot = 0.5 * (lo + hi)
        n = int(self.ulgm_epoch)
        cen = self.centers() if n > 1 else {}
        if cen.get("fusion") is not None:
            pos, neg = cen["fusion"]
            d_p = torch.linalg.vector_norm(feats["fusion"] - pos, dim=-1)
            d_n = torch.linalg.vector_norm(feats["fusion"] - neg, dim=-1)
            delta_m = (d_n - d_p) / (d_p + _MIN)
            y_m = self.ulgm_labels[r, 0] - pivot
            for j, m in enumerate(self.mods, 1):
                sel = has[m]
                if cen[m] is None or not bool(sel.any()):
                    continue
                pos, neg = cen[m]
                d_p = torch.linalg.vector_norm(feats[m] - pos, dim=-1)
                d_n = torch.linalg.vector_norm(feats[m] - neg, dim=-1)
                delta_s = (d_n - d_p) / (d_p + _MIN)
                alpha = delta_s / (delta_m + _MIN)
                new = 0.5 * alpha * y_m + 0.5 * (y_m + delta_s - delta_m)
                new = (new + pivot).clamp(lo, hi)
                old = self.ulgm_labels[r, j]
                mixed = (n - 1) / (n + 1) * old + 2 / (n + 1) * new
                self.ulgm_labels[r[sel], j] = mixed[sel]
        self.ulgm_feat_fusion[r] = feats["fusion"]
        self.ulgm_seen[r, 0] = True
        for j, m in enumerate(self.mods, 1):
            sel = has[m]
            getattr(self, f"ulgm_feat_{m}")[r[sel]] = feats[m][sel]
            self.ulgm_seen[r[sel], j] = True

    # ---------------------------------------------------------------- loss
    def loss(self, out: Output, batch: Batch) -> dict[str, torch.Tensor]:
        y = batch.y
        pred = self.regression_loss(out.pred, y)
        terms = {"pred": pred}
        total = pred
        uni, has = out.extras["unimodal"], out.extras["has"]
        if self.n_classes:
            for m in self.mods:
                ce = F.cross_entropy(uni[m], y.long(), reduction="none")
                terms[f"unimodal_{m}"] = (ce * has[m]).mean()
                total = total + terms[f"unimodal_{m}"]
            return {"total": total, **terms}
        rows = self.memory_rows(batch)
        known = rows >= 0
        for j, m in enumerate(self.mods, 1):
            y_s = y.clone()
            if bool(known.any()):
                y_s[known] = self.ulgm_labels[rows[known], j].to(y.dtype)
            w = torch.tanh((y_s - y).abs()) * has[m]
            terms[f"unimodal_{m}"] = (w * (uni[m] - y_s).abs()).mean()
            total = total + terms[f"unimodal_{m}"]
        if self.training:
            self.update_memory(out, rows)
        return {"total": total, **terms}
