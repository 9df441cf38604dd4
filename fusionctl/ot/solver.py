"""The single wrapper around POT used by every method.

Exact OT runs POT's network simplex on CPU in float64 (scipy's linear assignment when both
measures have the same size, which is the same problem); entropic OT runs POT's log-domain
Sinkhorn on the cost's device, with epsilon relative to the largest cost (METHOD.md A.3).
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import ot
import torch
from scipy.optimize import linear_sum_assignment

log = logging.getLogger(__name__)

METHODS = ("exact", "sinkhorn")


def uniform(n: int, like: torch.Tensor) -> torch.Tensor:
    return torch.full((n,), 1.0 / n, dtype=like.dtype, device=like.device)


def solve_ot(
    cost: torch.Tensor,
    method: str = "exact",
    reg: float = 1e-3,
    sinkhorn_iter: int = 2000,
    tol: float = 1e-9,
) -> torch.Tensor:
    """Optimal coupling between uniform measures for a cost matrix.

    Solves min_{P in U(1/n, 1/m)} <P, C>, exactly or with entropy epsilon * max(C).

    Parameters
    ----------
    cost : (n, m) tensor
    method : "exact" (network simplex) or "sinkhorn" (log-domain)
    reg : epsilon for sinkhorn, relative to max(C); must be > 0
    sinkhorn_iter : sinkhorn's iteration cap (the exact solver's cap scales with n * m)
    tol : sinkhorn stopping threshold on the marginal violation

    Returns
    -------
    P : (n, m) float64 tensor on cost's device, rows sum to 1/n and columns to 1/m
    """
    if method not in METHODS:
        raise ValueError(f"unknown OT method {method!r}; choose from {METHODS}")
    cost = cost.detach().to(torch.float64)
    n, m = cost.shape
    if method == "exact":
        if n == m:
            return _assignment(cost)
        return _emd(cost, max(100_000, 50 * n * m))
    if not reg > 0:
        raise ValueError(f"sinkhorn needs reg > 0, got {reg}")
    return _sinkhorn(cost, reg, sinkhorn_iter, tol)


def _assignment(cost: torch.Tensor) -> torch.Tensor:
    # Between two uniform measures of equal size an optimal plan is a permutation / n
    # (Birkhoff): the linear assignment problem is the same OT problem, solved much faster.
    n = cost.shape[0]
    rows, cols = linear_sum_assignment(cost.cpu().numpy())
    plan = torch.zeros(n, n, dtype=torch.float64)
    plan[torch.as_tensor(rows), torch.as_tensor(cols)] = 1.0 / n
    return plan.to(cost.device)


def _emd(cost: torch.Tensor, max_iter: int) -> torch.Tensor:
    n, m = cost.shape
    a = np.full(n, 1.0 / n)
    b = np.full(m, 1.0 / m)
    plan, info = ot.emd(a, b, cost.cpu().numpy(), numItermax=int(max_iter), log=True)
    if info.get("warning"):
        log.warning("exact OT (%dx%d) did not finish: %s", n, m, info["warning"])
    return torch.from_numpy(plan).to(cost.device)


def _sinkhorn(cost: torch.Tensor, reg: float, max_iter: int, tol: float) -> torch.Tensor:
    n, m = cost.shape
    scale = cost.max()
    # Identical inputs give C == 0; dividing by max(C) would give NaN (METHOD.md E.2-3).
    scaled = cost / scale if scale > 0 else cost
    a, b = uniform(n, cost), uniform(m, cost)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plan = ot.sinkhorn(a, b, scaled, reg, method="sinkhorn_log", numItermax=max_iter, stopThr=tol)
    if any("converge" in str(w.message).lower() for w in caught):
        residual = float((plan.sum(1) - a).abs().sum() + (plan.sum(0) - b).abs().sum())
        log.warning(
            "sinkhorn (%dx%d, reg=%g) stopped after %d iterations with marginal residual %.2e; "
            "raise solver.sinkhorn_iter or solver.reg",
            n, m, reg, max_iter, residual,
        )
    return plan
