"""DashFusion: dual-stream alignment with hierarchical bottleneck fusion.

Wen, Li, Zhou, Gao, Wen, Tao, Li. "DashFusion: Dual-Stream Alignment With Hierarchical
Bottleneck Fusion for Multimodal Sentiment Analysis", IEEE TNNLS 36(10), 2025.
Reference code: github.com/ultramarineX/DashFusion (read, not copied).

Blocks, in forward order (M modalities, d = 128; the lead modality is text when present):

1. Encoders. Text: the reference's projector (two bias-free linear layers with GELU, then a
   LayerNorm) on the precomputed features (``text_layers`` > 0 adds a masked transformer:
   ours, off by default, as in the reference whose BERT output is already contextual). Audio,
   vision (every other modality): a linear projection and a 2-layer masked transformer
   (``layers.attention.AttentionEncoder``, GELU feed-forward 2d, 8 heads, final LayerNorm).
   Every stream starts with a learned start token (the reference prepends one to audio and
   vision and reads BERT's [CLS] for text) and gets sinusoidal positions. Content under a
   False mask (``batch.observed``) is zeroed before the projection and never attended to; the
   start token is always a key, so no query ever meets an empty key set, and an absent modality
   is seen only through its start token, which carries none of its data.
2. Temporal alignment. The lead stream's queries attend to each other modality's stream (8
   heads of 32, bias-free projections, as the reference), the answers are summed, projected
   and added to the lead stream: the fused stream (``MaskedAttention`` with several sources).
3. Semantic alignment (training loss only, see below).
4. Hierarchical bottleneck fusion, depth 2. At each level (n = 8, then 4: halving), (a)
   self-attention over the current tokens (at level 0 the whole fused stream) keeps its first
   n outputs as the bottleneck, (b) the bottleneck attends to every modality stream (one
   softmax per modality, the answers summed, then a feed-forward), (c) every modality stream
   attends back to the bottleneck. The head (MLP (M+1)d-2d-d-1, GELU) reads the first
   bottleneck token and each modality's first (start) token. "First tokens" are the first
   *observed* ones: the fused stream is reordered per sample so that its observed steps come
   first, in order, after the start token, so a dropped or padded text step never seeds the
   bottleneck, and the slots of a text shorter than 7 steps are masked like missing steps.

Semantic alignment: supervised contrastive NT-Xent (temperature 0.5) over M + 1 views of a
sample, the mean of each modality's encoded observed steps and the fused stream's first token.
Per anchor, the positives are 2 training samples of the same label class (round(y /
``label_bin``), as the reference's rounded labels; the class index when classifying) among the
10 most similar, the negatives 2 of the 10 most similar and 2 of the 10 least similar samples of
other classes, each drawn at random in training, the best ones in evaluation mode (the
reference's "ss", "sd" and "dd" lists).
Similarity is the cosine of the concatenated, per-modality L2-normalised modality means (the
reference: the concatenated raw means). The pairs follow the reference's index lists: for every
view, anchor vs each positive, against the 4 negatives of the same view; and the lead view vs
each other modality of the same sample, against the lead view of the negatives. A pair counts
when both its ends and at least one negative are observed; the term is the mean over counted
pairs (the reference averages over 22 pairs of which the 12 cross-modal pairs of the retrieved
samples have no negatives and contribute nothing, so its term is about 10/22 of ours at equal
values). Loss: regression (MSE, reference) + 0.2 x contrastive, named ``pred``,
``contrastive`` and ``total``.

How the candidates are found (ours). The reference rebuilds an N x N similarity every 2 epochs
with a Python loop over N, and every step pushes 6 retrieved samples per anchor through the
encoders (7x the batch). Here a bank holds one detached entry per training sample (its views,
which of them are observed, its label class), rebuilt every ``refresh_every`` = 2 epochs
(reference) from the clean training split in evaluation mode (``on_train_epoch_start``). One
``Retriever`` per label class (``layers.retrieval``, exact cosine search; ids are training
rows, so an anchor never retrieves itself) answers the batch's queries and their negations (for
the least similar), so a step costs O(batch x N) search and one encoder pass over the batch;
the positives and negatives enter the loss as bank vectors (no gradient through them, as in a
memory bank, Wu et al. 2018), not re-encoded. The bank is only read by ``loss``; ``forward``
never touches it, so a prediction depends on the sample and the weights only, never on its
batch mates. The bank lives in buffers (in checkpoints, so a resumed run continues with the
same bank) and ``on_fit_end`` empties it, so ``model.pt`` does not carry it.

What we read in the reference and did not reproduce: its candidate lists store rank positions
instead of sample indices (``__pre_sample`` appends ``j``, not ``rank[i][j]``), so the samples
it retrieves sit at fixed positions near the start of the training set (the dissimilar lists,
with negative positions, near its end), whatever their labels; we select by label class, as the
paper describes. Its alignment and fusion attend to padded audio and vision steps (masks only
inside the audio and vision encoders); here missing steps and absent modalities are masked
everywhere. Its encoder layers run at dropout 0.5 (the encoder classes' default argument
overrides the 0.1 its config declares).

Defaults from the reference (config.py for MOSI): d 128, 8 heads, 2 audio/vision layers,
feed-forward 2d, GELU, temporal alignment with 8 heads of 32, fusion depth 2 with 8 bottleneck
tokens, no dropout in alignment, fusion and head, temperature 0.5, contrastive weight 0.2, MSE,
AdamW with weight decay 1e-3 (none on biases and norms), similarity rebuilt every 2 epochs,
2 + 2 + 2 samples drawn from the top 10.

Ours: pre-norm blocks (the reference is post-norm), each key source with its own LayerNorm, an
output projection after every fusion attention (the reference's fusion ``Attention`` concatenates
the heads without one), scores scaled by 1/sqrt(head width) in every attention (the reference's
fusion ``Attention`` scales by 1/sqrt(model width), sqrt(8) softer at 8 heads), sinusoidal
positions for every modality (the reference learns a fixed
375/500-step table for audio/vision and has none on top of BERT), learned start tokens for
every modality (the views' means leave them out; the reference's include its [CLS]), a
LayerNorm on the head's tokens, dropout 0.1 on the encoders' inputs, attention outputs and
feed-forward (none on attention weights, which would take torch off its fused kernel), at least
two modalities (the lead one queries the others), lr 1e-4 with a constant schedule and batch 32
(the reference fine-tunes BERT at 5e-5, batch 16, linear warm-up over 10 of 100 epochs, its
encoder layers at dropout 0.5: the ``paper`` preset). lr 1e-4 was the best of 5e-5 / 1e-4 /
3e-4 / 1e-3 on synthetic-tiny validation MAE (10 epochs, seeds 1 and 2: 0.642 / 0.623 / 0.628
/ 0.636, within seed noise of each other; the test split played no part).

Size at MOSI shapes (768/5/20): 2,468,737 parameters; the reference has 2,482,433 besides BERT
(its model class built with BERT stubbed out). Module by module, reference -> ours: text
projector 114,944 -> 114,944; audio encoder 331,520 -> 266,112 and vision encoder 351,360 ->
268,032 (gone: its learned position tables, 48,128 and 64,128, and its unused ``fc`` and
``dense`` layers, 768 + 16,512 and 2,688 + 16,512; projection, start token, 2 layers and final
LayerNorm are equal); temporal alignment 230,272 -> 196,736 (gone: its unused feed-forward and
2 LayerNorms, 33,536); fusion self-attention 231,936 -> 264,960, bottleneck to modalities
362,240 -> 396,800, modalities to bottleneck 695,808 -> 796,416 (ours: an output projection,
16,512, in each of these 10 attentions, whose heads the reference concatenates without one, and
a LayerNorm per key source, +768 per level and +256 per block back); head 164,353 -> 164,353;
ours only: the text start token, 128 (the reference reads BERT's [CLS]), and the head tokens'
LayerNorm, 256. Net: -112,256 position tables, -70,016 unused, +165,120 output projections,
+3,328 LayerNorms, +128 start token = -13,696.
Measured (synthetic-tiny, clean, 10 epochs, seeds 1 and 2): validation MAE 0.623 with the
contrastive term, 0.629 without it (``w_contrastive=0``); test MAE 0.703 / 0.695, oracle 0.577.

Text path of the reported numbers: precomputed text features (``text_encoder=features``, the
default) everywhere in BENCHMARKS.md; ``--set text_encoder=NAME`` fine-tunes a pretrained
encoder on the transcripts instead (models/layers/text.py), as the reference does with BERT.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from msakit.data.batch import MODALITIES, Batch
from msakit.errors import ConfigError
from msakit.models.base import ModelConfig, MSAModel, Output, register_model
from msakit.models.layers import (
    AttentionBlock,
    AttentionEncoder,
    MaskedAttention,
    PositionalEncoding,
    masked_mean,
    mlp,
    observed_first,
)
from msakit.models.layers.attention import attention_mask
from msakit.models.layers.retrieval import RETRIEVERS, Retriever, make_retriever

_BANK = ("bank_x", "bank_has", "bank_cls")


@dataclass
class DashFusionConfig(ModelConfig):
    d: int = 128
    heads: int = 8
    enc_layers: int = 2  # transformer layers of every modality but text (reference: 4 on MOSEI)
    text_layers: int = 0  # a masked transformer over the projected text (reference: none)
    lead: str = "auto"  # the stream that queries the others: "auto" = text when present
    align_heads: int = 8
    align_dim_head: int = 32
    fusion_depth: int = 2  # reference: 3 on MOSEI
    bottleneck: int = 8  # tokens at level 0, halved at each further level
    dropout: float = 0.1  # encoders
    fusion_dropout: float = 0.0  # alignment, fusion and head
    w_contrastive: float = 0.2  # 0: no contrastive term and no bank
    temperature: float = 0.5
    n_pos: int = 2  # positives per anchor
    n_hard: int = 2  # negatives among the most similar of other classes
    n_far: int = 2  # negatives among the least similar of other classes
    pool: int = 10  # each kind is drawn from this many best candidates
    refresh_every: int = 2  # epochs between bank rebuilds
    label_bin: float = 1.0  # regression: one label class per bin of this width (rounding)
    retriever: str = "exact"  # a name registered in msakit.models.layers.retrieval
    loss: str = "mse"
    lr: float = 1e-4
    weight_decay: float = 1e-3
    batch_size: int = 32

    CHOICES: ClassVar[dict[str, tuple]] = {**ModelConfig.CHOICES, "lead": ("auto", *MODALITIES)}
    # the reference's MOSI training (src/config.py: PARAM.Train; src/train.py: AdamW, linear
    # warm-up over 10 epochs then linear decay, MSE), with precomputed text features here;
    # dropout 0.5: what its audio/vision encoder layers run at (model/audio_encoder.py and
    # vision_encoder.py: the classes' default drop_out=0.5 is passed to their transformer
    # layers; config.py's 0.1 reaches only the input dropout)
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "paper": dict(lr=5e-5, batch_size=16, weight_decay=1e-3, epochs=100, loss="mse",
                      lr_schedule="linear", warmup_frac=0.1, dropout=0.5),
    }

    def check(self) -> None:
        if self.lead not in self.CHOICES["lead"]:  # also when a config is built directly
            choices = ", ".join(self.CHOICES["lead"])
            raise ConfigError(f"dashfusion: lead={self.lead!r}: expected one of {choices}")
        if self.retriever not in RETRIEVERS:
            raise ConfigError(
                f"dashfusion: retriever={self.retriever!r}: expected one of "
                f"{', '.join(RETRIEVERS.names())} (register more with register_retriever)")
        for k in ("d", "heads", "fusion_depth", "bottleneck", "pool", "refresh_every"):
            if getattr(self, k) < 1:
                raise ConfigError(f"dashfusion: {k}={getattr(self, k)}: expected an integer >= 1")
        if self.d % self.heads:
            raise ConfigError(f"dashfusion: d={self.d} must be divisible by heads={self.heads}")
        for k in ("temperature", "label_bin"):
            if not getattr(self, k) > 0:
                raise ConfigError(f"dashfusion: {k}={getattr(self, k)}: expected a number > 0")


class _MultiSourceBlock(nn.Module):
    """Pre-norm residual block whose queries attend to each of ``n_src`` sources with a softmax
    of its own (``MaskedAttention(sources=n_src)``, answers summed), then a GELU feed-forward
    2d. Each source has its own LayerNorm."""

    def __init__(self, d: int, heads: int, n_src: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.norm_src = nn.ModuleList(nn.LayerNorm(d) for _ in range(n_src))
        self.attn = MaskedAttention(d, heads, bias=False, sources=n_src)
        self.norm_ff = nn.LayerNorm(d)
        self.ff = mlp([d, 2 * d, d], dropout, act=nn.GELU)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, srcs: list[torch.Tensor], masks: list) -> torch.Tensor:
        """x (B, n, d); srcs [(B, L_s, d)]; masks [(B, 1, 1, L_s) or None] -> (B, n, d)."""
        src = [norm(s) for norm, s in zip(self.norm_src, srcs, strict=True)]
        x = x + F.dropout(self.attn(self.norm(x), masks, src), self.dropout, self.training)
        return x + F.dropout(self.ff(self.norm_ff(x)), self.dropout, self.training)


@register_model("dashfusion", DashFusionConfig)
class DashFusion(MSAModel):
    """DashFusion (TNNLS 2025): dual-stream alignment, hierarchical bottleneck fusion."""

    def __init__(self, dims: dict[str, int], config: DashFusionConfig, n_classes: int = 0) -> None:
        super().__init__(dims, config, n_classes)
        c = config
        c.check()
        self.mods = tuple(self.dims)  # canonical order
        if len(self.mods) < 2:
            raise ConfigError(f"dashfusion: needs at least two modalities, got dims={dims}")
        auto = "text" if "text" in self.dims else self.mods[0]
        self.lead = auto if c.lead == "auto" else c.lead
        if self.lead not in self.dims:
            raise ConfigError(
                f"dashfusion: lead modality {self.lead!r} not in the dataset's modalities "
                f"{self.mods} (config field 'lead')")
        self.others = tuple(m for m in self.mods if m != self.lead)
        d, n = c.d, len(self.mods)
        enc = dict(ff=2 * d, act="gelu", ff_dropout=c.dropout, res_dropout=c.dropout)
        fuse = dict(ff=2 * d, act="gelu", ff_dropout=c.fusion_dropout, res_dropout=c.fusion_dropout)

        # 1. encoders
        self.proj = nn.ModuleDict()
        self.enc = nn.ModuleDict()
        for m in self.mods:
            if m == "text":
                self.proj[m] = nn.Sequential(
                    nn.Linear(self.dims[m], d, bias=False), nn.GELU(),
                    nn.Linear(d, d, bias=False), nn.GELU(), nn.LayerNorm(d))
            else:
                self.proj[m] = nn.Linear(self.dims[m], d)
            layers = c.text_layers if m == "text" else c.enc_layers
            if layers:
                self.enc[m] = AttentionEncoder(d, c.heads, layers, zero_masked=False, **enc)
        self.start = nn.Parameter(torch.randn(n, d) * 0.02)  # one start token per modality
        self.pos = PositionalEncoding(d)
        # 2. temporal alignment: the lead stream queries every other stream, answers summed
        self.align = MaskedAttention(d, c.align_heads, dim_head=c.align_dim_head, bias=False,
                                     sources=len(self.others), init="default")
        # 4. hierarchical bottleneck fusion
        self.sizes = [max(1, c.bottleneck >> level) for level in range(c.fusion_depth)]
        self.q_self = nn.ModuleList(AttentionBlock(d, c.heads, **fuse) for _ in self.sizes)
        self.q_cross = nn.ModuleList(
            _MultiSourceBlock(d, c.heads, n, c.fusion_dropout) for _ in self.sizes)
        self.back = nn.ModuleList(
            nn.ModuleDict({m: AttentionBlock(d, c.heads, cross=True, **fuse) for m in self.mods})
            for _ in self.sizes)
        self.out_norm = nn.LayerNorm(d)
        self.head = mlp([(n + 1) * d, 2 * d, d, self.out_dim], c.fusion_dropout, act=nn.GELU)
        # the contrastive bank (see the module docstring): one row per training sample, the
        # views (modality means, then the fused token), which views are observed, label class
        self.register_buffer("bank_x", torch.zeros(0, n + 1, d))
        self.register_buffer("bank_has", torch.zeros(0, n + 1, dtype=torch.bool))
        self.register_buffer("bank_cls", torch.zeros(0, dtype=torch.long))
        self._bank_version = 0
        self._index_cache: tuple[int, list[tuple[int, Retriever, torch.Tensor]]] | None = None

    # ---------------------------------------------------------------- encoding and alignment
    def embed(self, batch: Batch):
        """Streams, key masks, views and their presence, before fusion.

        Returns ({m: (B, 1 + L_m, d)}, {m: (B, 1 + L_m) bool}, fused stream (B, 1 + L_lead, d),
        views (B, M + 1, d) (each modality's mean over its observed steps, then the fused
        stream's first token) and which views are observed (B, M + 1)."""
        streams, keeps, means, has = {}, {}, [], []
        for i, m in enumerate(self.mods):
            obs = batch.observed(m)  # (B, L)
            x = batch.x[m].masked_fill(~obs.unsqueeze(-1), 0.0)  # content under masks unread
            h = self.proj[m](x)
            h = torch.cat([self.start[i].expand(h.shape[0], 1, -1), h], 1)  # (B, 1 + L, d)
            h = F.dropout(self.pos(h), self.config.dropout, self.training)
            keep = torch.cat([obs.new_ones(obs.shape[0], 1), obs], 1)  # start token: always
            if m in self.enc:
                h = self.enc[m](h, keep)
            streams[m], keeps[m] = h, keep
            means.append(masked_mean(h[:, 1:], obs))
            has.append(obs.any(1))
        masks = [attention_mask(keeps[o])[0] for o in self.others]
        a = self.align(streams[self.lead], masks, [streams[o] for o in self.others])
        fused = streams[self.lead] + F.dropout(a, self.config.fusion_dropout, self.training)
        views = torch.stack([*means, fused[:, 0]], 1)
        present = torch.stack(has, 1)  # (B, M)
        view_has = torch.cat([present, present.any(1, keepdim=True)], 1)
        return streams, keeps, fused, views, view_has

    # ---------------------------------------------------------------- forward
    def forward(self, batch: Batch) -> Output:
        streams, keeps, fused, views, view_has = self.embed(batch)
        # the fused stream with its observed tokens first, in order (start token first)
        keep = keeps[self.lead]
        order = observed_first(keep)
        q = fused.gather(1, order.unsqueeze(-1).expand_as(fused))
        q_keep = keep.gather(1, order)
        srcs = [streams[m] for m in self.mods]
        src_masks = [attention_mask(keeps[m])[0] for m in self.mods]
        for level, size in enumerate(self.sizes):
            n = min(size, q.shape[1])
            mask, empty = attention_mask(q_keep)
            q = self.q_self[level](q, mask, empty, None, n)  # (B, n, d): keys are all tokens
            q_keep = q_keep[:, :n]
            q = self.q_cross[level](q, srcs, src_masks)
            mask, empty = attention_mask(q_keep)
            last = level == len(self.sizes) - 1  # then only the first tokens are read
            srcs = [self.back[level][m](s, mask, empty, q, 1 if last else None)
                    for m, s in zip(self.mods, srcs, strict=True)]
        tokens = self.out_norm(torch.stack([q[:, 0]] + [s[:, 0] for s in srcs], 1))
        pred = self.head_output(self.head(tokens.flatten(1)))
        return Output(pred, {"views": views, "view_has": view_has})

    # ---------------------------------------------------------------- contrastive bank
    def label_class(self, y: torch.Tensor) -> torch.Tensor:
        """(B,) labels -> (B,) int64 classes: "same label" for the contrastive pairs."""
        if self.n_classes:
            return y.long()
        return torch.round(y.float() / self.config.label_bin).long()

    def bank_len(self) -> int:
        return int(self.bank_x.shape[0])

    @staticmethod
    def _key(views: torch.Tensor, has: torch.Tensor) -> torch.Tensor:
        """Retrieval keys: per-modality L2-normalised means, concatenated; absent ones zero.
        views (N, M, d), has (N, M) -> (N, M * d)."""
        return (F.normalize(views, dim=-1) * has.unsqueeze(-1)).flatten(1)

    def set_bank(self, x: torch.Tensor, has: torch.Tensor, cls: torch.Tensor) -> None:
        """Replace the bank: views (N, M + 1, d), view presence (N, M + 1), classes (N,);
        row r is training-split row r."""
        self.bank_x, self.bank_has, self.bank_cls = x.detach().clone(), has.clone(), cls.clone()
        self._bank_version += 1

    @torch.no_grad()
    def refresh_bank(self, engine: Any) -> None:
        """Rebuild the bank from the whole clean training split, in evaluation mode. In data
        parallel training every rank rebuilds it from the whole split with the same weights, so
        the banks are equal without gathering anything."""
        was = self.training
        self.eval()
        dev = self.start.device
        n, v = len(engine.dataset.splits["train"]), len(self.mods) + 1
        x = torch.zeros(n, v, self.config.d, device=dev)
        has = torch.zeros(n, v, dtype=torch.bool, device=dev)
        cls = torch.zeros(n, dtype=torch.long, device=dev)
        for b in engine.train_batches(self):
            b = self.prepare_batch(b.to(dev))  # embed() bypasses the forward pre-hook
            *_, views, view_has = self.embed(b)
            rows = b.index.to(dev)
            x[rows], has[rows], cls[rows] = views, view_has, self.label_class(b.y)
        self.set_bank(x, has, cls)
        self.train(was)

    def on_train_epoch_start(self, epoch: int, engine: Any) -> None:
        if engine is None or self.config.w_contrastive == 0:
            return
        if epoch % self.config.refresh_every == 0 or self.bank_len() == 0:
            self.refresh_bank(engine)

    def on_fit_end(self, engine: Any) -> None:
        """Training is over: empty the bank (predictions never read it)."""
        d, v = self.config.d, len(self.mods) + 1
        dev = self.bank_x.device
        self.set_bank(torch.zeros(0, v, d, device=dev),
                      torch.zeros(0, v, dtype=torch.bool, device=dev),
                      torch.zeros(0, dtype=torch.long, device=dev))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # a saved bank may have any number of rows: take its size before loading
        for name in _BANK:
            t = state_dict.get(prefix + name)
            cur = getattr(self, name)
            if t is not None and t.shape != cur.shape:
                setattr(self, name, torch.empty(t.shape, dtype=cur.dtype, device=cur.device))
        self._bank_version += 1
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _indices(self) -> list[tuple[int, Retriever, torch.Tensor]]:
        """(class, Retriever over the keys of that class's bank rows, the rows) per label class
        of the bank; rebuilt only when the bank changed."""
        if self._index_cache is not None and self._index_cache[0] == self._bank_version:
            return self._index_cache[1]
        m = len(self.mods)
        keys = self._key(self.bank_x[:, :m], self.bank_has[:, :m])
        usable = self.bank_has.any(1)
        out = []
        for k in torch.unique(self.bank_cls[usable]).tolist():
            rows = (usable & (self.bank_cls == k)).nonzero().squeeze(1)
            r = make_retriever(self.config.retriever)
            r.add(keys[rows], rows)
            out.append((int(k), r, rows))
        self._index_cache = (self._bank_version, out)
        return out

    def _draw(self, scores: torch.Tensor, rows: torch.Tensor, n: int):
        """Among the ``pool`` best candidates per anchor (scores (B, C), -inf = not one), n
        drawn at random in training, the n best otherwise -> rows (B, n), valid (B, n)."""
        top, at = scores.topk(min(self.config.pool, scores.shape[1]), dim=1)
        ok = torch.isfinite(top)
        if self.training:
            rank = torch.rand(top.shape, device=top.device)
        else:
            rank = -torch.arange(top.shape[1], device=top.device, dtype=top.dtype).expand_as(top)
        pick = rank.masked_fill(~ok, float("-inf")).topk(min(n, top.shape[1]), dim=1).indices
        return rows.gather(1, at.gather(1, pick)), ok.gather(1, pick)

    def candidates(self, views: torch.Tensor, view_has: torch.Tensor, batch: Batch):
        """Positives and negatives from the bank: rows (B, n_pos), (B, n_hard + n_far) and
        their validity; a row is never the anchor's own (ids are training rows)."""
        c, m = self.config, len(self.mods)
        cls = self.label_class(batch.y.to(views.device))
        q = self._key(views[:, :m].detach(), view_has[:, :m])
        ids = batch.index.to(q.device) if batch.index is not None else None
        near_s, near_r, far_s, far_r, same = [], [], [], [], []
        for k, r, rows in self._indices():
            for query, s_out, r_out in ((q, near_s, near_r), (-q, far_s, far_r)):
                s, p = r.search(query, c.pool, exclude_ids=ids)  # (B, pool), -1 = none
                s_out.append(s)
                r_out.append(torch.where(p >= 0, rows[p.clamp_min(0)], -1))
            same.append((cls == k).unsqueeze(1).expand(-1, c.pool))
        near_s, near_r = torch.cat(near_s, 1), torch.cat(near_r, 1)
        far_s, far_r = torch.cat(far_s, 1), torch.cat(far_r, 1)
        same = torch.cat(same, 1)
        inf = float("-inf")
        pos = self._draw(near_s.masked_fill(~same, inf), near_r, c.n_pos)
        hard = self._draw(near_s.masked_fill(same, inf), near_r, c.n_hard)
        far = self._draw(far_s.masked_fill(same, inf), far_r, c.n_far)
        return pos, (torch.cat([hard[0], far[0]], 1), torch.cat([hard[1], far[1]], 1))

    def contrastive(
        self, views: torch.Tensor, view_has: torch.Tensor, batch: Batch
    ) -> torch.Tensor:
        """Supervised NT-Xent of the batch's views against bank positives and negatives
        (see the module docstring); 0 while the bank is empty."""
        c = self.config
        if c.w_contrastive == 0 or not self._indices():  # no bank, or no usable row in it
            return views.new_zeros(())
        (pos_r, pos_ok), (neg_r, neg_ok) = self.candidates(views, view_has, batch)
        bank = F.normalize(self.bank_x, dim=-1)
        z = F.normalize(views, dim=-1)  # (B, V, d)
        pos_r, neg_r = pos_r.clamp_min(0), neg_r.clamp_min(0)
        s_pos = torch.einsum("bvd,bpvd->bpv", z, bank[pos_r]) / c.temperature  # (B, P, V)
        s_neg = torch.einsum("bvd,bnvd->bnv", z, bank[neg_r]) / c.temperature  # (B, N, V)
        pos_valid = pos_ok.unsqueeze(-1) & self.bank_has[pos_r] & view_has.unsqueeze(1)
        neg_valid = neg_ok.unsqueeze(-1) & self.bank_has[neg_r]
        # -log(e^p / (e^p + sum_n e^n)) = softplus(logsumexp_n(n) - p); a finite fill keeps
        # the gradient of a row without negatives finite (its pairs are not counted)
        lse = s_neg.masked_fill(~neg_valid, torch.finfo(s_neg.dtype).min).logsumexp(1)  # (B, V)
        has_neg = neg_valid.any(1)  # (B, V)
        losses = [F.softplus(lse.unsqueeze(1) - s_pos).flatten(1)]
        counted = [(pos_valid & has_neg.unsqueeze(1)).flatten(1)]
        # cross-modal: the lead view vs each other modality of the same sample, against the
        # lead view of the negatives
        li = self.mods.index(self.lead)
        for j, m in enumerate(self.mods):
            if m != self.lead:
                s = (z[:, li] * z[:, j]).sum(-1, keepdim=True) / c.temperature  # (B, 1)
                losses.append(F.softplus(lse[:, li : li + 1] - s))
                counted.append((view_has[:, li] & view_has[:, j] & has_neg[:, li]).unsqueeze(1))
        loss, ok = torch.cat(losses, 1), torch.cat(counted, 1)
        return torch.where(ok, loss, 0.0).sum() / ok.sum().clamp_min(1)

    def loss(self, out: Output, batch: Batch) -> dict[str, torch.Tensor]:
        reg = self.regression_loss(out.pred, batch.y)
        con = self.contrastive(out.extras["views"], out.extras["view_has"], batch)
        return {"total": reg + self.config.w_contrastive * con, "pred": reg, "contrastive": con}

    def param_groups(self) -> list[dict]:
        """Weight decay on matrices only (the reference exempts biases)."""
        decay, no_decay = [], []
        for p in self.parameters():
            if p.requires_grad:
                (decay if p.ndim > 1 else no_decay).append(p)
        return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
