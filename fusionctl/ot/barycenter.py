"""Free-support Wasserstein barycenter with a fixed number of uniform-mass support points.

This is the layer problem of WB fusion (METHOD.md A.3) once every base model's nodes are
written in the barycenter's input basis: node k of model i is a point y_k^i in R^D, and

    min_{X, P_i in U(1/m, 1/n_i)}  sum_i lambda_i <P_i, C(X, Y_i)>,  C(x, y) = |x - y|^2.

Alternating minimisation: an OT step per measure, then the closed-form barycentric
projection X = sum_i lambda_i diag(1 / P_i 1) P_i Y_i (Cuturi & Doucet 2014, Alg. 2).
Dividing by the actual row mass makes the projection exact for soft couplings too.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fusionctl.ot.permutation import Permutation, dense, inner, same
from fusionctl.ot.solver import Potentials, solve_ot


@dataclass
class BarycenterResult:
    support: torch.Tensor  # (m, D) barycenter points
    couplings: list  # (m, n_i) per measure: tensors, or Permutations
    iterations: int
    converged: bool
    cost: float  # sum_i lambda_i <P_i, C_i> of the last OT step
    unconverged_solves: int = 0  # sinkhorn solves that stopped at their iteration cap


def sq_distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pairwise squared Euclidean distances, (m, D) x (n, D) -> (m, n), clamped at 0."""
    d = (x * x).sum(1, keepdim=True) + (y * y).sum(1)[None, :] - 2.0 * x @ y.T
    return d.clamp_min_(0.0)


def plan_cost(x: torch.Tensor, y: torch.Tensor, method: str) -> torch.Tensor:
    """The cost an OT solve between point clouds x (m, D) and y (n, D) needs. Sinkhorn's blur is
    relative to the cost's scale, so it gets squared distances; an exact plan gets -<x, y>, the
    squared distance less one term per row and one per column, which no plan between fixed
    marginals can see (no norms, no cancellation: a quarter less time at width 2048)."""
    return -(x @ y.T) if method == "exact" else sq_distances(x, y)


Part = tuple[torch.Tensor, float]  # (n, d) features and the factor they are scaled by


def plan_cost_parts(xs: list[Part], ys: list[Part], method: str, out: torch.Tensor | None = None) -> torch.Tensor:
    """plan_cost of x = [a_s x_s] and y = [b_s y_s], concatenated along features, without forming
    either: one accumulating product per part, scales folded into it (copying a group's slices
    into one matrix took a seventh of a sweep at width 1024). `out`: a cost to add this one to, in place."""
    scale = 1.0 if method == "exact" else 2.0  # squared distances: |x|^2 + |y|^2 - 2 <x, y>
    for (x, a), (y, b) in zip(xs, ys):
        if out is None:  # beta = 0: the empty buffer is not read
            out = torch.addmm(x.new_empty(x.shape[0], y.shape[0]), x, y.T, beta=0, alpha=-scale * a * b)
        else:
            out.addmm_(x, y.T, alpha=-scale * a * b)
    if out is None:
        raise ValueError("no features to compare")
    if method == "exact":
        return out
    rows = sum(a * a * (x * x).sum(1) for x, a in xs)
    cols = sum(b * b * (y * y).sum(1) for y, b in ys)
    return out.add_(rows[:, None]).add_(cols[None, :]).clamp_min_(0.0)


def coupling_change(new: list, old: list) -> float:
    """Largest entry change over all couplings, scaled by the barycenter size m (scale-free)."""

    def change(p, q) -> float:
        if isinstance(p, Permutation) and isinstance(q, Permutation):  # permutations / m: 0 if equal, else 1
            return float(not same(p, q))
        return float((dense(p) - dense(q)).abs().max()) * p.shape[0]

    return max(change(p, q) for p, q in zip(new, old))


def permutation_of(matrix: torch.Tensor) -> torch.Tensor | None:
    """Source index per row if `matrix` is a permutation matrix (ones), else None."""
    if matrix.shape[0] != matrix.shape[1]:
        return None
    cols = matrix.argmax(1)
    if not torch.equal(matrix.sum(1), torch.ones_like(matrix[:, 0])) or not torch.all(matrix[torch.arange(len(cols)), cols] == 1):
        return None
    return cols


def project(couplings: list, measures: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    """Barycentric projection sum_i lambda_i diag(1 / P_i 1) P_i Y_i (a gather when P_i is a permutation)."""
    out = 0.0
    for p, y, w in zip(couplings, measures, weights):
        if isinstance(p, Permutation):
            out = out + w * y[p.index.to(y.device)]
            continue
        rows = p / p.sum(1, keepdim=True)
        hits = permutation_of(rows)
        if hits is not None:
            out = out + w * y[hits]
        else:
            out = out + w * rows @ y
    return out


def free_support_barycenter(
    measures: list[torch.Tensor],
    weights: list[float],
    init: torch.Tensor,
    ot_method: str = "exact",
    reg: float = 1e-3,
    max_iter: int = 100,
    tol: float = 1e-5,
    sinkhorn_iter: int = 1000,
    blocks: int = 1,
    within: bool = True,
) -> BarycenterResult:
    """Alternate OT steps and projections from `init` until the couplings stop changing.

    Parameters
    ----------
    measures : list of (n_i, D) tensors, uniform mass 1/n_i on each row
    weights : lambda_i, non-negative, summing to 1
    init : (m, D) initial support; m is the barycenter's size
    max_iter : cap on OT+projection rounds; max_iter=1 is a single anchored pass
    blocks, within : > 1: nodes move only in whole blocks (attention heads), and only whole if
        not within (see solve_ot)
    tol : stop when m * max|P_i(t) - P_i(t-1)| < tol for every i (scale-free, unlike
        an absolute tolerance on the support; METHOD.md E.2-14); soft couplings also stop
        when a round changes the objective by less than tol relative (they never stop
        moving entirely). Sinkhorn potentials are warm-started from the previous round.

    Returns
    -------
    BarycenterResult with the final support equal to the projection of the final couplings.
    """
    x = init.to(torch.float64)
    ys = [y.to(torch.float64) for y in measures]
    m = x.shape[0]
    previous = [torch.full((m, y.shape[0]), 1.0 / (m * y.shape[0]), dtype=x.dtype, device=x.device) for y in ys]
    warm = [Potentials() for _ in ys]
    converged, unconverged = False, 0
    it, total, last = 0, float("nan"), float("inf")
    for it in range(1, max_iter + 1):
        costs = [sq_distances(x, y) for y in ys]
        couplings = [solve_ot(c, ot_method, reg, sinkhorn_iter, w, blocks, within) for c, w in zip(costs, warm)]
        unconverged += sum(not w.converged for w in warm)
        total = sum(w * inner(p, c) for p, c, w in zip(couplings, costs, weights))
        x = project(couplings, ys, weights)
        change = coupling_change(couplings, previous)
        previous = couplings
        if change < tol or (ot_method != "exact" and abs(last - total) <= tol * abs(total)):
            converged = True
            break
        last = total
    return BarycenterResult(x, previous, it, converged, total, unconverged)
