"""Helpers every model shares: masked pooling, windowing, MLPs, positions. Masks are boolean
(True = observed) and content under a False mask is never read. Attention is in
:mod:`msakit.models.layers.attention`."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x (B, L, D), mask (B, L) bool -> (B, D); rows with no observed step give zeros."""
    w = mask.to(x.dtype).unsqueeze(1)  # (B, 1, L): one batched matrix product, no (B, L, D) copy
    return torch.bmm(w, x).squeeze(1) / w.sum(2).clamp_min(1.0)


def window_mean(
    x: torch.Tensor, mask: torch.Tensor, max_steps: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask-aware shortening of (B, L, D) sequences to at most ``max_steps`` windows.

    Sample i's steps up to its last observed one (n_i of them) fall into windows of
    ceil(n_i / max_steps) steps, each the mean of its observed steps; a window is observed if
    any of its steps is. The window size depends only on the sample's own mask, never on the
    batch's padding, and content under a False mask is never read. Sequences no longer than
    ``max_steps`` come back as they are (the same tensors: mask downstream).
    Returns (B, L', D), (B, L')."""
    b, L, _ = x.shape
    if L <= max_steps:
        return x, mask
    x = x.masked_fill(~mask.unsqueeze(-1), 0.0)
    steps = torch.arange(L, device=x.device)
    n = torch.where(mask, steps + 1, 0).amax(1)  # (B,) one past the last observed step
    size = ((n + max_steps - 1) // max_steps).clamp_min(1)
    win = (steps[None, :] // size[:, None]).clamp_max(max_steps - 1)  # (B, L)
    w = mask.to(x.dtype)
    sums = x.new_zeros(b, max_steps, x.shape[2]).index_put_(
        (torch.arange(b, device=x.device)[:, None], win), x * w.unsqueeze(-1), accumulate=True
    )
    cnt = x.new_zeros(b, max_steps).scatter_add_(1, win, w)
    return sums / cnt.clamp_min(1.0).unsqueeze(-1), cnt > 0


def mlp(sizes: list[int], dropout: float = 0.0, act: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """Linear layers with ``act`` and dropout between them (none after the last)."""
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers += [act(), nn.Dropout(dropout)]
    return nn.Sequential(*layers)


class PositionalEncoding(nn.Module):
    """Sinusoidal positions (Vaswani et al. 2017), added to (B, L, D) inputs."""

    def __init__(self, d: int, max_len: int = 4096) -> None:
        super().__init__()
        pos = torch.arange(max_len).unsqueeze(1)
        div = torch.exp(torch.arange(0, d, 2) * (-math.log(10000.0) / d))
        pe = torch.zeros(max_len, d)
        pe[:, 0::2] = torch.sin(pos * div)
        pe[:, 1::2] = torch.cos(pos * div[: d // 2])
        self.register_buffer("pe", pe, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pe[: x.shape[1]].unsqueeze(0)


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, alpha: float) -> torch.Tensor:
        ctx.alpha = alpha
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return -ctx.alpha * grad, None


def grad_reverse(x: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """Identity forward; multiplies the gradient by ``-alpha`` on the way back."""
    return _GradReverse.apply(x, alpha)


def observed_first(obs: torch.Tensor) -> torch.Tensor:
    """(B, L) observed mask -> (B, L) step indices: each row's observed steps first, in time
    order, then the others."""
    return torch.argsort((~obs).to(torch.uint8), dim=1, stable=True)


def rnn_last(rnn: nn.RNNBase, x: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
    """(B, H) last hidden state of a unidirectional batch-first ``rnn`` (its top layer) after
    each row's observed steps, read in time order: the state a packed run would end in.

    The observed steps are moved to the front only when some row has a gap, content under the
    mask is zeroed, and the RNN runs on the padded batch (oneDNN's fused kernel on CPU, several times
    faster than a packed run over unequal lengths); a causal RNN's output at a row's last
    observed step does not depend on the steps after it. Rows with no observed step get a
    value the caller must replace."""
    if rnn.bidirectional:
        raise ValueError("rnn_last: a bidirectional RNN needs pack_observed")
    n = obs.sum(1)
    steps = torch.arange(obs.shape[1], device=obs.device)
    if not bool((obs == (steps[None, :] < n[:, None])).all()):  # a gap: observed steps first
        x = x.gather(1, observed_first(obs).unsqueeze(-1).expand_as(x))
        obs = steps[None, :] < n[:, None]
    if not bool(obs.all()):  # zeros, so no NaN under a mask reaches the weight gradients
        x = x.masked_fill(~obs.unsqueeze(-1), 0.0)
    out, _ = rnn(x)
    return out[torch.arange(x.shape[0], device=x.device), (n - 1).clamp_min(0)]


def pack_observed(x: torch.Tensor, obs: torch.Tensor) -> PackedSequence:
    """(B, L, D) steps and (B, L) observed -> a PackedSequence of each row's observed steps in
    time order, so an RNN reads neither padding nor dropped steps (rows with none get one zero
    step: the caller replaces their output)."""
    x = x.masked_fill(~obs.unsqueeze(-1), 0.0)
    x = x.gather(1, observed_first(obs).unsqueeze(-1).expand_as(x))
    n = obs.sum(1).clamp_min(1).cpu()
    return pack_padded_sequence(x, n, batch_first=True, enforce_sorted=False)
