"""k-nearest-neighbour retrieval behind a small interface, so an ANN index can replace the
exact search.

A :class:`Retriever` indexes key vectors, each with an integer id (unique within the index)::

    r = make_retriever("exact")          # ExactRetriever: one matmul + topk, cosine scores
    r.add(keys, ids)                     # keys (N, d), ids (N,) int64
    scores, pos = r.search(queries, k)   # (B, k) each; pos indexes rows in order of addition
    scores, pos = r.search(queries, k, exclude_ids=batch_ids)  # skip each query's own entry

``pos == -1`` (score ``-inf``) marks slots with no neighbour (fewer than k entries). Results
are sorted by decreasing score. Exclusion is generic: the base class asks the index for k+1
neighbours and drops the query's own id, so an index only implements ``_add``, ``_search`` and
``reset``. To plug in FAISS, wrap e.g. ``faiss.IndexFlatIP`` / ``IndexHNSWFlat`` over
L2-normalised keys in a subclass and ``register_retriever("faiss", FaissRetriever)``; the exact
torch search is fast enough at MSA dataset sizes (thousands to tens of thousands of entries).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch.nn import functional as F

from msakit.registry import Registry


class Retriever(ABC):
    """k-NN index over key vectors with integer ids (see the module docstring)."""

    def __init__(self) -> None:
        self.ids = torch.zeros(0, dtype=torch.long)

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def add(self, keys: torch.Tensor, ids: torch.Tensor | None = None) -> None:
        """Index ``keys`` (N, d); ``ids`` (N,) int64 default to their positions."""
        if keys.ndim != 2:
            raise ValueError(f"Retriever.add: keys must be (N, d), got {tuple(keys.shape)}")
        n = keys.shape[0]
        if ids is None:
            ids = torch.arange(len(self), len(self) + n, device=keys.device)
        if ids.shape != (n,):
            raise ValueError(f"Retriever.add: ids must be ({n},), got {tuple(ids.shape)}")
        self._add(keys.detach())
        self.ids = torch.cat([self.ids.to(keys.device), ids.to(keys.device).long()])

    def search(
        self, queries: torch.Tensor, k: int, exclude_ids: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The k best entries per query: (scores (B, k), positions (B, k), -1 where none).

        ``exclude_ids`` (B,) int64: each query's own id, never returned (-1: exclude nothing)."""
        if queries.ndim != 2:
            raise ValueError(
                f"Retriever.search: queries must be (B, d), got {tuple(queries.shape)}"
            )
        if k < 1:
            raise ValueError(f"Retriever.search: k must be >= 1, got {k}")
        if exclude_ids is None or len(self) == 0:
            return self._padded(queries, k)
        scores, pos = self._padded(queries, k + 1)  # ids are unique: at most one to drop
        own = (pos >= 0) & (self.ids[pos.clamp_min(0)] == exclude_ids.to(pos.device)[:, None])
        scores = scores.masked_fill(own, float("-inf"))
        # stable sort keeps the index's order; dropped entries move to the end
        scores, order = torch.sort(scores, dim=1, descending=True, stable=True)
        pos = torch.gather(pos.masked_fill(own, -1), 1, order)
        return scores[:, :k], pos[:, :k]

    def _padded(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        b = queries.shape[0]
        scores = torch.full((b, k), float("-inf"), device=queries.device)
        pos = torch.full((b, k), -1, dtype=torch.long, device=queries.device)
        kk = min(k, len(self))
        if kk > 0:
            s, p = self._search(queries.detach(), kk)
            scores[:, :kk], pos[:, :kk] = s, p
        return scores, pos

    @abstractmethod
    def reset(self) -> None:
        """Empty the index."""

    @abstractmethod
    def _add(self, keys: torch.Tensor) -> None:
        """Append keys (N, d) after those already indexed."""

    @abstractmethod
    def _search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """k <= len(self) best (scores, positions), sorted by decreasing score."""


class ExactRetriever(Retriever):
    """Exact search in torch: one (B, d) x (d, N) matmul and a topk.

    metric ``"cosine"`` (keys and queries L2-normalised) or ``"dot"`` (inner product)."""

    def __init__(self, metric: str = "cosine") -> None:
        super().__init__()
        if metric not in ("cosine", "dot"):
            raise ValueError(f"ExactRetriever: metric must be 'cosine' or 'dot', got {metric!r}")
        self.metric = metric
        self.keys: torch.Tensor | None = None

    def _prep(self, v: torch.Tensor) -> torch.Tensor:
        return F.normalize(v.float(), dim=-1) if self.metric == "cosine" else v.float()

    def reset(self) -> None:
        self.keys = None
        self.ids = torch.zeros(0, dtype=torch.long)

    def _add(self, keys: torch.Tensor) -> None:
        k = self._prep(keys)
        self.keys = k if self.keys is None else torch.cat([self.keys, k])

    def _search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        sim = self._prep(queries) @ self.keys.T  # (B, N)
        return torch.topk(sim, k, dim=1)


RETRIEVERS: Registry[type[Retriever]] = Registry("retriever")
RETRIEVERS.register("exact", ExactRetriever)


def register_retriever(name: str, cls: type[Retriever]) -> type[Retriever]:
    """Make ``cls`` (a :class:`Retriever` subclass taking ``metric=``) available by name."""
    return RETRIEVERS.register(name, cls)


def make_retriever(name: str = "exact", metric: str = "cosine") -> Retriever:
    """A fresh, empty retriever of a registered kind."""
    return RETRIEVERS.get(name)(metric=metric)
