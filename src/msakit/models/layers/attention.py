"""Masked multi-head attention on torch's fused kernel, and MulT's crossmodal transformer.

``MaskedAttention`` calls ``F.scaled_dot_product_attention`` (the fused flash kernel on CPU and
GPU), so the (B, heads, L_q, L_k) attention matrix is never stored. Masks are boolean, True =
observed; a row with no observed key attends to its first key (content not trusted) so softmax
stays finite, and callers replace those rows (see ``CrossmodalTransformer``'s ``null`` state).

Attention dropout: the fused kernel has no dropout on CPU (with ``dropout_p > 0`` torch falls
back to the unfused path, which stores the whole matrix and draws one random number per entry).
``dropout_mode="key"`` (default) instead drops keys before the softmax, one draw per sample,
head and key, shared by all queries (as DropKey, Li et al. CVPR 2023, but per key, not per
entry): the softmax renormalises over the kept keys, the kernel stays fused, and the cost is
B*H*L_k random numbers. A row whose keys would all be dropped keeps its observed keys.
``dropout_mode="weights"`` is the classic dropout on the attention weights (slow path).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from msakit.models.layers.common import PositionalEncoding, safe_padding

DROPOUT_MODES = ("key", "weights")


def attention_mask(obs: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """obs (B, L) bool -> (mask (B, 1, 1, L) bool, True = attend; empty (B,) bool rows).

    Rows with nothing observed attend to key 0 so softmax stays finite; their output must be
    replaced by the caller. When every key is observed the mask is None (the kernel skips the
    masking work); when no row is empty, ``empty`` is None."""
    if bool(obs.all()):
        return None, None
    kpm, empty = safe_padding(obs)
    return (~kpm)[:, None, None, :], (empty if bool(empty.any()) else None)


class MaskedAttention(nn.Module):
    """Multi-head attention (self or cross) through ``F.scaled_dot_product_attention``.

    Parameters as ``nn.MultiheadAttention``: one packed (3d, d) input projection with bias and a
    (d, d) output projection; Xavier-uniform weights, zero biases (as fairseq / MulT)."""

    def __init__(self, d: int, heads: int, dropout: float = 0.0, dropout_mode: str = "key"):
        super().__init__()
        if d % heads:
            raise ValueError(f"MaskedAttention: d={d} must be divisible by heads={heads}")
        if dropout_mode not in DROPOUT_MODES:
            raise ValueError(f"dropout_mode={dropout_mode!r}: expected one of {DROPOUT_MODES}")
        self.d, self.heads, self.dropout, self.dropout_mode = d, heads, dropout, dropout_mode
        self.in_proj = nn.Linear(d, 3 * d)
        self.out_proj = nn.Linear(d, d)
        nn.init.xavier_uniform_(self.in_proj.weight)
        nn.init.xavier_uniform_(self.out_proj.weight)
        nn.init.zeros_(self.in_proj.bias)
        nn.init.zeros_(self.out_proj.bias)

    def _heads(self, t: torch.Tensor, n: int) -> list[torch.Tensor]:
        # (B, L, n*d) -> n tensors (B, H, L, d/H)
        b, L, _ = t.shape
        t = t.view(b, L, n, self.heads, self.d // self.heads).permute(2, 0, 3, 1, 4)
        return list(t.unbind(0))

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None, src: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x (B, Lq, d) queries; src (B, Lk, d) keys/values (None: self-attention on x);
        mask (B, 1, 1, Lk) bool from :func:`attention_mask` (None: every key). -> (B, Lq, d)."""
        w, bias = self.in_proj.weight, self.in_proj.bias
        if src is None:
            q, k, v = self._heads(F.linear(x, w, bias), 3)
        else:
            d = self.d
            (q,) = self._heads(F.linear(x, w[:d], bias[:d]), 1)
            k, v = self._heads(F.linear(src, w[d:], bias[d:]), 2)
        p = self.dropout if self.training else 0.0
        if p > 0 and self.dropout_mode == "key":
            b, lk = k.shape[0], k.shape[2]
            keep = torch.rand(b, self.heads, 1, lk, device=x.device) >= p
            base = keep.new_ones(()) if mask is None else mask
            keep = keep & base
            # never drop every observed key of a row
            mask = torch.where(keep.any(-1, keepdim=True), keep, base)
            p = 0.0
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        b, _, lq, _ = o.shape
        return self.out_proj(o.transpose(1, 2).reshape(b, lq, self.d))


class CrossmodalLayer(nn.Module):
    """Pre-norm block: x + Attn(LN(x), LN(src)), then x + FFN(LN(x)); FFN d-4d-d with ReLU.

    The query and the source share the first LayerNorm (as MulT). With ``null``, rows whose
    source has no observed step get a learned vector as attention output instead."""

    def __init__(
        self,
        d: int,
        heads: int,
        attn_dropout: float = 0.0,
        relu_dropout: float = 0.0,
        res_dropout: float = 0.0,
        dropout_mode: str = "key",
        null: bool = False,
    ) -> None:
        super().__init__()
        self.attn = MaskedAttention(d, heads, attn_dropout, dropout_mode)
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.fc1, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        for lin in (self.fc1, self.fc2):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)
        self.relu_dropout, self.res_dropout = relu_dropout, res_dropout
        self.null = nn.Parameter(torch.zeros(d)) if null else None

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        empty: torch.Tensor | None,
        src: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B, Lq, d); mask, empty from :func:`attention_mask`; src (B, Lk, d) or None."""
        h = self.norm1(x)
        a = self.attn(h, mask, None if src is None else self.norm1(src))
        if self.null is not None and empty is not None:
            a = torch.where(empty[:, None, None], self.null.expand_as(a), a)
        x = x + F.dropout(a, self.res_dropout, self.training)
        h = F.dropout(F.relu(self.fc1(self.norm2(x))), self.relu_dropout, self.training)
        return x + F.dropout(self.fc2(h), self.res_dropout, self.training)


class CrossmodalTransformer(nn.Module):
    """MulT's transformer: target queries attend to a source sequence (or to themselves).

    Inputs are scaled by sqrt(d), given sinusoidal positions (optional) and embedding dropout;
    ``layers`` :class:`CrossmodalLayer` blocks, each re-reading the same source sequence, and a
    final LayerNorm. Keys follow ``src_obs`` (``x_obs`` for self-attention); masked steps never
    influence observed ones. For cross-attention (``null=True``) a sample whose source has no
    observed step gets learned attention outputs, so its target content passes through the
    residual path. For self-attention, rows with no observed step come out finite but
    meaningless: the caller replaces them.
    """

    def __init__(
        self,
        d: int,
        heads: int,
        layers: int,
        attn_dropout: float = 0.0,
        relu_dropout: float = 0.0,
        res_dropout: float = 0.0,
        embed_dropout: float = 0.0,
        dropout_mode: str = "key",
        null: bool = False,
        positions: bool = True,
    ) -> None:
        super().__init__()
        self.scale = math.sqrt(d)
        self.embed_dropout = embed_dropout
        self.pos = PositionalEncoding(d) if positions else None
        self.layers = nn.ModuleList(
            CrossmodalLayer(d, heads, attn_dropout, relu_dropout, res_dropout, dropout_mode, null)
            for _ in range(layers)
        )
        self.norm = nn.LayerNorm(d)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        x = x * self.scale
        if self.pos is not None:
            x = self.pos(x)
        return F.dropout(x, self.embed_dropout, self.training)

    def forward(
        self,
        x: torch.Tensor,
        x_obs: torch.Tensor,
        src: torch.Tensor | None = None,
        src_obs: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B, Lq, d), x_obs (B, Lq); src (B, Lk, d), src_obs (B, Lk) or None -> (B, Lq, d)."""
        mask, empty = attention_mask(x_obs if src is None else src_obs)
        x = self._embed(x)
        s = None if src is None else self._embed(src)
        for layer in self.layers:
            x = layer(x, mask, empty, s)
        return self.norm(x)
