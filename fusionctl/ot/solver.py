"""The single OT solver used by every method.

Exact OT runs POT's network simplex on CPU in float64 (scipy's linear assignment when both
measures have the same size, which is the same problem); entropic OT runs a stabilised
Sinkhorn (scaling iterations on a kernel that absorbs the log-domain potentials) on the cost's
device, with epsilon relative to the largest cost (METHOD.md A.3).

Sinkhorn ends in bounded time: epsilon is annealed from 1 down to `reg` (epsilon scaling),
potentials can be warm-started from the previous round of a barycenter loop, and the loop
stops once the row-marginal error (L1, total mass 1) is below SINKHORN_TOL * epsilon: on the
max-normalised cost that error moves <P, C> by less than a hundredth of the entropic blur.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import ot
import torch
from scipy.optimize import linear_sum_assignment

from fusionctl.errors import FusionctlError
from fusionctl.ot.permutation import Permutation

log = logging.getLogger(__name__)

METHODS = ("exact", "sinkhorn")
SINKHORN_TOL = 1e-2  # marginal error allowed, in units of epsilon on the max-normalised cost


@dataclass
class Potentials:
    """Sinkhorn dual potentials (in units of the max-normalised cost) kept between calls."""

    f: torch.Tensor | None = None
    g: torch.Tensor | None = None
    converged: bool = True  # the last solve met the marginal tolerance at the requested epsilon
    iterations: int = 0
    error: float = 0.0  # its row-marginal L1 error


def uniform(n: int, like: torch.Tensor) -> torch.Tensor:
    return torch.full((n,), 1.0 / n, dtype=like.dtype, device=like.device)


def solve_ot(
    cost: torch.Tensor,
    method: str = "exact",
    reg: float = 1e-3,
    sinkhorn_iter: int = 1000,
    warm: Potentials | None = None,
    blocks: int = 1,
    within: bool = True,
) -> torch.Tensor | Permutation:
    """Optimal coupling between uniform measures for a cost matrix.

    Solves min_{P in U(1/n, 1/m)} <P, C>, exactly or with entropy epsilon * max(C).

    Parameters
    ----------
    cost : (n, m) tensor
    method : "exact" (network simplex / assignment) or "sinkhorn" (entropic, stabilised)
    reg : epsilon for sinkhorn, relative to max(C); must be > 0
    sinkhorn_iter : sinkhorn's iteration cap over all annealing stages
    warm : sinkhorn only: potentials of a previous, similar problem (read, then overwritten
        with this solve's potentials and convergence); without it epsilon is annealed from 1.
        Callers report non-convergence (once, naming solver.sinkhorn_iter and solver.reg).
    blocks : > 1 for nodes that move only as whole blocks of n / blocks (attention heads,
        permuted as heads and within each head): always an exact assignment, since a soft
        plan cannot keep the blocks apart
    within : False: blocks move whole, each node keeping its place in its block (attention heads
        under rotary position embeddings)

    Returns
    -------
    P : (n, m) float64 tensor on cost's device, rows sum to 1/n and columns to 1/m; an exact plan
        between equal sizes is a Permutation (its index; permutation.py)
    """
    if method not in METHODS:
        raise ValueError(f"unknown OT method {method!r}; choose from {METHODS}")
    n, m = cost.shape
    cost = cost.detach()
    if not (method == "exact" and n == m and blocks == 1 and cost.dtype == torch.float32):
        cost = cost.to(torch.float64)  # a plain assignment's scipy reads float32 itself: no second copy at width 2048
    if blocks > 1:
        if n != m or n % blocks:
            raise ValueError(f"a group of {blocks} blocks (attention heads) needs the same width in every model, got {n} and {m}")
        return assignment_coupling(cost, blocks, within)
    if method == "exact":
        if n == m:
            return assignment_coupling(cost)
        return _emd(cost, max(100_000, 50 * n * m))
    if not reg > 0:
        raise ValueError(f"sinkhorn needs reg > 0, got {reg}")
    return _sinkhorn(cost, reg, sinkhorn_iter, warm if warm is not None else Potentials())


def assignment_coupling(cost: torch.Tensor, blocks: int = 1, within: bool = True) -> Permutation:
    """The minimum-cost permutation / n of a square cost (any device; solved on the CPU), as a coupling.

    Between two uniform measures of equal size an optimal plan is a permutation / n (Birkhoff):
    the linear assignment problem is the same OT problem, solved much faster."""
    return perm_coupling(assignment(cost.cpu().numpy(), blocks, within), cost.device)


def perm_coupling(perm, device="cpu") -> Permutation:
    """Coupling P/n with P[j, perm[j]] = 1: target node j takes source node perm[j]."""
    return Permutation(perm).to(device)


def assignment(cost: np.ndarray, blocks: int = 1, within: bool = True) -> np.ndarray:
    """The column of each row in a minimum-cost permutation of a square cost matrix. With blocks > 1,
    the best among permutations that map each block of n / blocks consecutive rows onto one block of
    columns: one assignment per pair of blocks, then one between blocks on their optimal costs.
    within=False: each row keeps its place in its block (the pair's cost is its diagonal's)."""
    if blocks == 1:
        return linear_sum_assignment(cost)[1]
    d = cost.shape[0] // blocks
    tiles = cost.reshape(blocks, d, blocks, d)
    inner = [[linear_sum_assignment(tiles[a, :, b])[1] if within else np.arange(d) for b in range(blocks)] for a in range(blocks)]
    between = np.array([[tiles[a, np.arange(d), b, inner[a][b]].sum() for b in range(blocks)] for a in range(blocks)])
    to = linear_sum_assignment(between)[1]
    return np.concatenate([to[a] * d + inner[a][to[a]] for a in range(blocks)])


def _emd(cost: torch.Tensor, max_iter: int) -> torch.Tensor:
    n, m = cost.shape
    a = np.full(n, 1.0 / n)
    b = np.full(m, 1.0 / m)
    # POT's network simplex can report a feasible problem with negative costs infeasible (an
    # all-zero plan), e.g. -<x, y> between near-duplicate rows; a constant shift leaves the
    # optimal plans unchanged, since every plan has the same total mass.
    c = cost.cpu().numpy()
    plan, info = ot.emd(a, b, c - min(c.min(), 0.0), numItermax=int(max_iter), log=True)
    if info.get("warning"):
        if not np.isclose(plan.sum(), 1.0, rtol=1e-6):  # no plan at all, not just an unfinished one
            raise FusionctlError(f"exact OT ({n}x{m}) failed: {info['warning']}; fuse with solver.ot=sinkhorn instead")
        log.warning("exact OT (%dx%d) did not finish: %s", n, m, info["warning"])
    return torch.from_numpy(plan).to(cost.device)


def _sinkhorn(cost: torch.Tensor, reg: float, max_iter: int, warm: Potentials) -> torch.Tensor:
    n, m = cost.shape
    scale = cost.max()
    # Identical inputs give C == 0; dividing by max(C) would give NaN (METHOD.md E.2-3).
    c = cost / scale if scale > 0 else cost
    if warm.f is not None and warm.f.shape == (n,) and warm.g.shape == (m,):
        f, g, stages = warm.f.to(c.device), warm.g.to(c.device), [reg]
    else:
        f, g = torch.zeros(n, dtype=c.dtype, device=c.device), torch.zeros(m, dtype=c.dtype, device=c.device)
        stages = [max(reg, 0.5**k) for k in range(int(math.ceil(math.log2(1.0 / reg))) + 1)] if reg < 1 else [reg]
    it = 0
    # one (n, m) buffer reused by every iteration: fresh (n, m) temporaries (and their page
    # faults) took two thirds of a Sinkhorn solve at n = 2048
    buf = torch.empty_like(c)
    for eps in dict.fromkeys(stages):  # each epsilon once, largest first
        f, g, it, err = _stage(c, f, g, eps, it, max_iter, buf)
        if it >= max_iter:
            break  # the plan below uses the epsilon reached, a blurrier but valid coupling
    warm.f, warm.g, warm.iterations = f, g, it
    warm.converged = eps == reg and err <= SINKHORN_TOL * reg
    warm.error = err
    return _kernel(c, f, g, eps, buf)


SCALING_BOUND = 1e10  # scalings u, v outside [1 / bound, bound] are absorbed into the potentials


def _kernel(c: torch.Tensor, f: torch.Tensor, g: torch.Tensor, eps: float, out: torch.Tensor) -> torch.Tensor:
    """exp((f_i + g_j - C_ij) / eps): the plan of potentials f, g, written into `out`."""
    return torch.add((f / eps)[:, None], c, alpha=-1.0 / eps, out=out).add_((g / eps)[None, :]).exp_()


def _stage(c: torch.Tensor, f: torch.Tensor, g: torch.Tensor, eps: float, it: int, max_iter: int, buf: torch.Tensor):
    """Sinkhorn iterations at one epsilon from potentials f, g, until the row-marginal error
    (checked before each row update) is below SINKHORN_TOL * eps or `it` reaches max_iter.
    Returns (f, g, it, err).

    Stabilised scaling (Schmitzer 2019): the kernel K = exp((f + g - C) / eps) absorbs the
    potentials, so the plan is diag(u) K diag(v) with scalings near 1 and an iteration is two
    matrix-vector products, where a log-domain one makes about ten passes over an (n, m) array.
    Scalings that leave [1 / SCALING_BOUND, SCALING_BOUND] are absorbed and K is remade. Where
    K has a row or column without mass or an infinite entry (a warm start far off, a cost far
    below zero), the scalings turn 0 or infinite: that step is dropped and one log-domain
    iteration, which never overflows, comes before K is made again."""
    n, m = c.shape
    a, b = uniform(n, c), uniform(m, c)
    err, rescue = float("inf"), False
    while it < max_iter:
        if rescue:
            f = eps * (-math.log(n) - _logsumexp(c, g, eps, 1, buf))
            g = eps * (-math.log(m) - _logsumexp(c, f, eps, 0, buf))
            it += 1
        kernel = _kernel(c, f, g, eps, buf)
        u, v = torch.ones_like(f), torch.ones_like(g)
        while it < max_iter:
            kv = kernel @ v
            err = float((u * kv - a).abs().sum())  # rows of the current plan: u * (K v)
            if err <= SINKHORN_TOL * eps:
                return f + eps * u.log(), g + eps * v.log(), it, err
            u_next = a / kv
            v_next = b / (u_next @ kernel)
            low, high = _range(u_next, v_next)
            rescue = not (low > 0 and high < math.inf)
            if rescue:
                break  # not counted: the log-domain iteration takes its place, so even the last one leaves a plan
            u, v, it = u_next, v_next, it + 1
            if not (low >= 1.0 / SCALING_BOUND and high <= SCALING_BOUND):
                break
        f, g = f + eps * u.log(), g + eps * v.log()  # absorb the scalings
    return f, g, it, err


def _range(*scalings: torch.Tensor) -> list[float]:
    """The smallest and largest entry of the scalings (NaN if any is), read in one transfer."""
    return torch.stack(torch.aminmax(torch.cat(scalings))).tolist()


def _logsumexp(c: torch.Tensor, potential: torch.Tensor, eps: float, dim: int, buf: torch.Tensor) -> torch.Tensor:
    """log sum exp((potential - C) / eps) along `dim` (1: a row's, with a column potential), computed in `buf`."""
    p = (potential / eps)[None, :] if dim == 1 else (potential / eps)[:, None]
    torch.add(p, c, alpha=-1.0 / eps, out=buf)
    mx = buf.amax(dim, keepdim=True)
    return buf.sub_(mx).exp_().sum(dim).log_() + mx.squeeze(dim)
