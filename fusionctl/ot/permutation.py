"""Permutation couplings held as index vectors.

Exact OT between two uniform measures of the same size has a permutation / n as its optimal
plan (Birkhoff). Held densely, it takes n^2 float64 values where its index takes n integers:
for two ViT-B/16 the dense couplings were 1.8 GiB (3072^2 per MLP group), and a 1B-parameter
LLM would need about 11 GiB. Transports, projections and change tests read the index (a gather);
`dense` gives the matrix where code treats every coupling as one (GWB's small recurrent layers,
a change test against a soft coupling).
"""

from __future__ import annotations

import torch


class Permutation:
    """The coupling P / n with P[j, index[j]] = 1: target node j takes source node index[j]."""

    __slots__ = ("index", "_identity")

    def __init__(self, index):
        self.index = torch.as_tensor(index, dtype=torch.long)
        self._identity: bool | None = None

    @property
    def identity(self) -> bool:
        """Whether every node keeps its place (a transport by it is a no-op); checked once."""
        if self._identity is None:
            self._identity = torch.equal(self.index, torch.arange(self.index.numel(), device=self.index.device))
        return self._identity

    @property
    def shape(self) -> torch.Size:
        n = self.index.numel()
        return torch.Size((n, n))

    @property
    def device(self) -> torch.device:
        return self.index.device

    @property
    def T(self) -> Permutation:  # noqa: N802 (as a tensor's)
        """The transpose: the inverse permutation / n."""
        return Permutation(torch.argsort(self.index))

    def to(self, device) -> Permutation:
        return Permutation(self.index.to(device))

    def cpu(self) -> Permutation:
        return self.to("cpu")

    def dense(self, dtype=torch.float64) -> torch.Tensor:
        n = self.index.numel()
        plan = torch.zeros(n, n, dtype=dtype, device=self.index.device)
        plan[torch.arange(n, device=self.index.device), self.index] = 1.0 / n
        return plan

    def __repr__(self) -> str:
        return f"Permutation(n={self.index.numel()})"


class Merge:
    """ZipIt's merge of one model's units (fusion/zipit.py): source unit a joins target unit
    cluster[a], which is the mean of its members over every model, weighted by the models' lambdas.
    The fusion sum_i lambda_i T_i(theta_i) reads it as two maps: rows (what a target unit writes)
    by Q[u, a] = scale[u] for a in u, scale[u] = 1 / (the lambda-weighted count of u's members);
    an input axis by the indicator I[u, a] = 1 for a in u, since a later layer reads the fused unit
    wherever it read any of its members. Not a plan: T_i(theta_i) alone is no model."""

    __slots__ = ("cluster", "scale")

    def __init__(self, cluster, scale):
        self.cluster = torch.as_tensor(cluster, dtype=torch.long)
        self.scale = torch.as_tensor(scale, dtype=torch.float64)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self.scale.numel(), self.cluster.numel()))

    @property
    def device(self) -> torch.device:
        return self.cluster.device

    def to(self, device) -> Merge:
        return Merge(self.cluster.to(device), self.scale.to(device))

    def cpu(self) -> Merge:
        return self.to("cpu")

    def indicator(self, dtype=torch.float64) -> torch.Tensor:
        plan = torch.zeros(self.shape, dtype=dtype, device=self.cluster.device)
        plan[self.cluster, torch.arange(self.cluster.numel(), device=self.cluster.device)] = 1.0
        return plan

    def dense(self, dtype=torch.float64) -> torch.Tensor:
        """Q: the rows' map."""
        return self.indicator(dtype) * self.scale.to(dtype)[:, None]

    def __repr__(self) -> str:
        return f"Merge({self.cluster.numel()} units -> {self.scale.numel()})"


def dense(coupling) -> torch.Tensor:
    """A coupling as its (target, source) matrix (a Merge: its rows' map)."""
    return coupling.dense() if isinstance(coupling, (Permutation, Merge)) else coupling


def same(a, b) -> bool:
    """Whether two couplings are equal (two permutations: by their indices, without densifying)."""
    if isinstance(a, Permutation) and isinstance(b, Permutation):
        return torch.equal(a.index, b.index.to(a.device))
    a, b = dense(a), dense(b)
    return a.shape == b.shape and torch.equal(a, b.to(a.device))


def inner(coupling, cost: torch.Tensor) -> float:
    """<P, C>: a permutation / n reads one entry per row."""
    if isinstance(coupling, Permutation):
        rows = torch.arange(cost.shape[0], device=cost.device)
        return float(cost[rows, coupling.index.to(cost.device)].sum(dtype=torch.float64)) / cost.shape[0]
    return float((coupling * cost).sum())
