"""The one masked attention block every model uses, and the encoder built from it.

:class:`MaskedAttention` calls ``F.scaled_dot_product_attention`` (the fused flash kernel on CPU
and GPU), so the (B, heads, L_q, L_k) attention matrix is never stored. Masks are boolean,
True = observed; a key under a False mask is never attended to. A row with no observed key
attends to its first key (so softmax stays finite on every backend) and :class:`AttentionBlock`
then replaces its attention output by zeros or a learned ``null`` state.

Attention dropout (``dropout_mode``): ``"weights"`` is the classic dropout on the attention
weights (MMSA's MulT, ``nn.MultiheadAttention``); on CPU the fused kernel has no dropout, so
torch falls back to the unfused path, which stores the whole matrix and draws one random
number per entry. ``"key"`` instead drops keys before the softmax, one draw per sample, head
and key, shared by all queries (as DropKey, Li et al. CVPR 2023, but per key, not per entry):
the softmax renormalises over the kept keys, the kernel stays fused, and the cost is B*H*L_k
random numbers. A row whose keys would all be dropped keeps its observed keys.

Initialisation (``init``) reproduces the models' original modules under the same seed:
``"xavier"`` (fairseq / MulT: Xavier-uniform weights, zero biases), ``"torch"``
(``nn.MultiheadAttention`` / ``nn.TransformerEncoderLayer``: Xavier-uniform input projection,
zero attention biases, ``nn.Linear`` defaults elsewhere; the attention output is laid out
length-major in memory as there, so dropout on it draws the same masks), ``"default"``
(``nn.Linear`` defaults).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import skip_init

DROPOUT_MODES = ("key", "weights")
INITS = ("xavier", "torch", "default")
def _geglu(h: torch.Tensor) -> torch.Tensor:
    """GEGLU (Shazeer 2020): the first half gated by GELU of the second."""
    a, g = h.chunk(2, dim=-1)
    return a * F.gelu(g)


ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "geglu": _geglu}


def attention_mask(obs: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """obs (B, L) bool -> (mask (B, 1, 1, L) bool, True = attend; empty (B,) bool rows).

    Rows with nothing observed attend to key 0 so softmax stays finite; their output must be
    replaced (:class:`AttentionBlock` does). When every key is observed the mask is None (the
    kernel skips the masking work); when no row is empty, ``empty`` is None."""
    if bool(obs.all()):
        return None, None
    empty = ~obs.any(1)
    if not bool(empty.any()):
        return obs[:, None, None, :], None
    obs = obs.clone()
    obs[empty, 0] = True
    return obs[:, None, None, :], empty


def _check(name: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r}: expected one of {tuple(allowed)}")


class MaskedAttention(nn.Module):
    """Multi-head attention (self or cross) through ``F.scaled_dot_product_attention``.

    ``in_proj`` packs the projections (d -> inner each, inner = heads * dim_head, dim_head
    d / heads by default): queries, then keys and values of each of ``sources`` sources, with
    bias unless ``bias=False``; ``out_proj`` maps inner -> d (always with bias). With several
    sources the same queries attend to each separately and the answers are summed before the
    output projection (ALMT's hyper-modality update)."""

    def __init__(
        self,
        d: int,
        heads: int,
        dropout: float = 0.0,
        dropout_mode: str = "weights",
        *,
        dim_head: int | None = None,
        bias: bool = True,
        sources: int = 1,
        init: str = "torch",
    ) -> None:
        super().__init__()
        if dim_head is None and d % heads:
            raise ValueError(f"MaskedAttention: d={d} must be divisible by heads={heads}")
        _check("dropout_mode", dropout_mode, DROPOUT_MODES)
        _check("init", init, INITS)
        self.heads, self.dropout, self.dropout_mode = heads, dropout, dropout_mode
        self.length_major = init == "torch"
        self.inner = heads * (dim_head or d // heads)
        n_in = (1 + 2 * sources) * self.inner
        # the order of construction keeps each original module's random draws
        if init == "torch":  # nn.MultiheadAttention draws nothing for its input projection
            self.in_proj = skip_init(nn.Linear, d, n_in, bias=bias)
        else:
            self.in_proj = nn.Linear(d, n_in, bias=bias)
        self.out_proj = nn.Linear(self.inner, d)
        if init != "default":
            nn.init.xavier_uniform_(self.in_proj.weight)
            if init == "xavier":
                nn.init.xavier_uniform_(self.out_proj.weight)
            if bias:
                nn.init.zeros_(self.in_proj.bias)
            nn.init.zeros_(self.out_proj.bias)

    def _heads(self, t: torch.Tensor, n: int) -> list[torch.Tensor]:
        # (B, L, n*inner) -> n tensors (B, H, L, dim_head)
        b, L, _ = t.shape
        t = t.view(b, L, n, self.heads, -1).permute(2, 0, 3, 1, 4)
        return list(t.unbind(0))

    def _attend(self, q, k, v, mask: torch.Tensor | None) -> torch.Tensor:
        p = self.dropout if self.training else 0.0
        if p > 0 and self.dropout_mode == "key":
            b, lk = k.shape[0], k.shape[2]
            keep = torch.rand(b, self.heads, 1, lk, device=k.device) >= p
            base = keep.new_ones(()) if mask is None else mask
            keep = keep & base
            # never drop every observed key of a row
            mask = torch.where(keep.any(-1, keepdim=True), keep, base)
            p = 0.0
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | Sequence[torch.Tensor | None] | None = None,
        src: torch.Tensor | Sequence[torch.Tensor] | None = None,
        n_query: int | None = None,
    ) -> torch.Tensor:
        """x (B, L, d) queries (only the first ``n_query`` when given); src (B, Lk, d) keys and
        values, a list of them with several sources, or None (self-attention on x); mask
        (B, 1, 1, Lk) bool from :func:`attention_mask` (None: every key), a list with a list of
        sources. -> (B, Lq, d)."""
        w, bias, n = self.in_proj.weight, self.in_proj.bias, self.inner

        def proj(t: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
            return F.linear(t, w[lo:hi], None if bias is None else bias[lo:hi])

        if src is None and n_query is None:
            q, k, v = self._heads(F.linear(x, w, bias), 3)
            o = self._attend(q, k, v, mask)
        else:
            (q,) = self._heads(proj(x if n_query is None else x[:, :n_query], 0, n), 1)
            srcs = [x] if src is None else [src] if isinstance(src, torch.Tensor) else src
            masks = mask if isinstance(mask, (list, tuple)) else [mask] * len(srcs)
            o = None
            for i, (s, m) in enumerate(zip(srcs, masks, strict=True)):
                k, v = self._heads(proj(s, n + 2 * i * n, n + 2 * (i + 1) * n), 2)
                a = self._attend(q, k, v, m)
                o = a if o is None else o + a
        b, _, lq, _ = o.shape
        if self.length_major:  # (B, Lq, d) view of an (Lq, B, d) tensor
            return self.out_proj(o.permute(2, 0, 1, 3).reshape(lq, b, n)).transpose(0, 1)
        return self.out_proj(o.transpose(1, 2).reshape(b, lq, n))


class AttentionBlock(nn.Module):
    """Pre-norm residual block: x + drop(Attn(LN(x), LN(src))), then x + drop(FF(LN(x))).

    Self-attention when ``src`` is None, else x's queries attend to ``src``; the source shares
    the queries' LayerNorm (MulT) unless ``cross`` gives it its own. Feed-forward d-``ff``-d
    (default 4d) with ``act`` ("relu", "gelu", or "geglu": the first layer 2 x ff wide, half of
    it gating the other); dropout ``ff_dropout`` after the activation,
    ``res_dropout`` on the attention output and ``ff_res_dropout`` (default ``res_dropout``)
    on the feed-forward output; ``attn_dropout`` of kind ``dropout_mode`` inside attention.
    Rows with no observed key get a zero attention output, or the learned ``null`` vector."""

    def __init__(
        self,
        d: int,
        heads: int,
        *,
        dim_head: int | None = None,
        ff: int | None = None,
        act: str = "relu",
        attn_dropout: float = 0.0,
        dropout_mode: str = "weights",
        ff_dropout: float = 0.0,
        res_dropout: float = 0.0,
        ff_res_dropout: float | None = None,
        cross: bool = False,
        bias: bool = True,
        null: bool = False,
        init: str = "torch",
    ) -> None:
        super().__init__()
        _check("act", act, tuple(ACTIVATIONS))
        self.norm1 = nn.LayerNorm(d)
        self.norm_src = nn.LayerNorm(d) if cross else None
        self.attn = MaskedAttention(
            d, heads, attn_dropout, dropout_mode, dim_head=dim_head, bias=bias, init=init
        )
        self.norm2 = nn.LayerNorm(d)
        ff = ff or 4 * d
        self.fc1, self.fc2 = nn.Linear(d, 2 * ff if act == "geglu" else ff), nn.Linear(ff, d)
        if init == "xavier":
            for lin in (self.fc1, self.fc2):
                nn.init.xavier_uniform_(lin.weight)
                nn.init.zeros_(lin.bias)
        self.null = nn.Parameter(torch.zeros(d)) if null else None
        self.act = ACTIVATIONS[act]
        self.ff_dropout, self.res_dropout = ff_dropout, res_dropout
        self.ff_res_dropout = res_dropout if ff_res_dropout is None else ff_res_dropout

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        empty: torch.Tensor | None = None,
        src: torch.Tensor | None = None,
        n_query: int | None = None,
    ) -> torch.Tensor:
        """x (B, L, d); mask, empty from :func:`attention_mask` over the keys (x's steps, or
        src's); src (B, Lk, d) or None; n_query: only the first n queries (the keys stay all
        of x's steps). -> (B, n_query or L, d)."""
        h = self.norm1(x)
        if src is not None:
            src = (self.norm1 if self.norm_src is None else self.norm_src)(src)
        a = self.attn(h, mask, src, n_query)
        if empty is not None:  # where() keeps a's memory layout (dropout masks below)
            fill = a.new_zeros(()) if self.null is None else self.null
            a = torch.where(empty[:, None, None], fill, a)
        if n_query is not None:
            x = x[:, :n_query]
        x = x + F.dropout(a, self.res_dropout, self.training)
        h = F.dropout(self.act(self.fc1(self.norm2(x))), self.ff_dropout, self.training)
        return x + F.dropout(self.fc2(h), self.ff_res_dropout, self.training)


class AttentionEncoder(nn.Module):
    """``layers`` :class:`AttentionBlock` s (keyword options as there), then a LayerNorm unless
    ``norm=False``. Self-attention, or every layer re-reads the same ``src``. With ``clone``
    every layer starts as a copy of the first (as ``nn.TransformerEncoder`` builds them).

    Masked keys get no attention weight; with ``zero_masked`` the steps under a False ``keep``
    (of x in self-attention, of src otherwise) are also zeroed first, so even non-finite
    content there cannot reach the output (a caller whose masked steps are finite, e.g.
    zero-filled before a projection, may skip that pass)."""

    def __init__(
        self,
        d: int,
        heads: int,
        layers: int,
        norm: bool = True,
        clone: bool = False,
        zero_masked: bool = True,
        **block,
    ) -> None:
        super().__init__()
        self.zero_masked = zero_masked
        self.layers = nn.ModuleList()
        for _ in range(layers):
            first = self.layers[0] if clone and len(self.layers) else None
            self.layers.append(
                copy.deepcopy(first) if first is not None else AttentionBlock(d, heads, **block)
            )
        self.norm = nn.LayerNorm(d) if norm else None

    @classmethod
    def like_torch(
        cls, d: int, heads: int, layers: int, ff: int, dropout: float, attn_dropout: float
    ) -> AttentionEncoder:
        """As ``nn.TransformerEncoder`` of ``nn.TransformerEncoderLayer(d, heads, ff, dropout,
        norm_first=True)`` (ReLU, attention-weight dropout ``attn_dropout``), then a LayerNorm."""
        return cls(d, heads, layers, clone=True, ff=ff, attn_dropout=attn_dropout,
                   ff_dropout=dropout, res_dropout=dropout)

    def forward(
        self,
        x: torch.Tensor,
        keep: torch.Tensor | None = None,
        src: torch.Tensor | None = None,
        n_out: int | None = None,
        all_layers: bool = False,
    ) -> torch.Tensor | list[torch.Tensor]:
        """x (B, L, d); keep (B, Lk) bool, True = the key may be attended (None: all); src
        (B, Lk, d) or None; n_out: the last layer computes only the first n queries.
        -> (B, n_out or L, d), or with ``all_layers`` [x, each layer's output] (the last
        normed)."""
        mask, empty = (None, None) if keep is None else attention_mask(keep)
        if mask is not None and self.zero_masked:
            hide = ~keep.unsqueeze(-1)
            if src is None:
                x = x.masked_fill(hide, 0.0)
            else:
                src = src.masked_fill(hide, 0.0)
        states = [x]
        for i, layer in enumerate(self.layers):
            last = i == len(self.layers) - 1
            x = layer(x, mask, empty, src, n_out if last else None)
            if all_layers:
                states.append(x)
        if self.norm is not None:
            x = self.norm(x)
        if not all_layers:
            return x
        states[-1] = x
        return states


class HyperModalityLayer(nn.Module):
    """ALMT's adaptive hyper-modality layer (lnln, almt): the dominant tokens query each
    auxiliary modality's tokens (one attention with a source per modality); the summed answers
    shift the (normalised) hyper tokens."""

    def __init__(self, d: int, heads: int, aux: tuple[str, ...]) -> None:
        super().__init__()
        self.norm_dom, self.norm_hyper = nn.LayerNorm(d), nn.LayerNorm(d)
        self.norm_aux = nn.ModuleDict({m: nn.LayerNorm(d) for m in aux})
        self.attn = MaskedAttention(d, heads, bias=False, sources=len(aux), init="default")

    def forward(
        self, dom: torch.Tensor, aux: dict[str, torch.Tensor], hyper: torch.Tensor
    ) -> torch.Tensor:
        src = [norm(aux[m]) for m, norm in self.norm_aux.items()]
        return self.norm_hyper(hyper) + self.attn(self.norm_dom(dom), None, src)
