"""Fused Gromov-Wasserstein barycenter for layers whose nodes also relate to each other.

A recurrent layer's node j carries features x_j (incoming weights, in the barycenter's input
basis) and structure H[:, j, :] (its recurrent weights from the layer's own nodes, one slice
per gate). With couplings P_i of mass 1/m per barycenter node (METHOD.md B.3):

    min_{X, H, P_i}  sum_i lambda_i [ <P_i, C(X, Y_i)>
                       + alpha m sum_{j,k,j',k'} P_i(j,k) P_i(j',k') |H[:, j, j'] - H_i[:, k, k']|^2 ]

The factor m puts the structure term on the same "sum over aligned coordinates" scale as the
feature term (for a permutation both are squared distances between aligned rows), so alpha = 1
weighs a node's recurrent row like its input row. Solved by nested fixed points: the inner
loop linearises the quadratic term at the current P and re-solves OT; the outer loop updates
X and H in closed form, H = sum_i lambda_i R_i H_i S_i^T (R row-, S column-normalised P_i).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fusionctl.ot.barycenter import coupling_change, project, sq_distances
from fusionctl.ot.permutation import dense, inner
from fusionctl.ot.solver import Potentials, solve_ot


@dataclass
class GWBarycenterResult:
    support: torch.Tensor  # (m, D)
    structure: torch.Tensor  # (G, m, m)
    couplings: list  # tensors, or Permutations
    iterations: int
    converged: bool
    cost: float
    unconverged_solves: int = 0


def gw_linear_term(hbar: torch.Tensor, h: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """(m, n) matrix sum_{j',k'} p(j',k') |hbar[:, j, j'] - h[:, k, k']|^2, summed over gates.

    hbar (G, m, m), h (G, n, n), p (m, n).
    """
    p = dense(p)  # recurrent layers are small (hundreds of units)
    r, s = p.sum(1), p.sum(0)
    rows_bar = ((hbar * hbar) @ r).sum(0)  # (m,)
    rows = ((h * h) @ s).sum(0)  # (n,)
    cross = torch.einsum("gab,bc,gdc->ad", hbar, p, h)
    return rows_bar[:, None] + rows[None, :] - 2.0 * cross


def project_structure(couplings, structures, weights) -> torch.Tensor:
    out = 0.0
    for p, h, w in zip(couplings, structures, weights):
        p = dense(p)
        rows = p / p.sum(1, keepdim=True)
        cols = p / p.sum(0, keepdim=True)
        out = out + w * rows @ h @ cols.T
    return out


def fused_gw_barycenter(
    features: list[torch.Tensor],
    structures: list[torch.Tensor],
    weights: list[float],
    init_x: torch.Tensor,
    init_h: torch.Tensor,
    alpha: float = 1.0,
    ot_method: str = "exact",
    reg: float = 1e-3,
    max_iter: int = 100,
    inner_iter: int = 50,
    tol: float = 1e-5,
    sinkhorn_iter: int = 1000,
) -> GWBarycenterResult:
    """Nested fixed point from `init_x`/`init_h`; couplings start from the feature-only OT.

    Starting from uniform couplings (the authors' choice) makes the first linearisation compare
    only row histograms (METHOD.md E.2-7); the feature-only coupling is an informed start.
    """
    x = init_x.to(torch.float64)
    hbar = init_h.to(torch.float64)
    ys = [y.to(torch.float64) for y in features]
    hs = [h.to(torch.float64) for h in structures]
    m = x.shape[0]

    def cost(i, p):
        return sq_distances(x, ys[i]) + alpha * m * gw_linear_term(hbar, hs[i], p)

    warm = [Potentials() for _ in ys]
    couplings = [solve_ot(sq_distances(x, y), ot_method, reg, sinkhorn_iter, w) for y, w in zip(ys, warm)]
    converged, it, unconverged = False, 0, 0
    for it in range(1, max_iter + 1):
        updated = []
        for i, p in enumerate(couplings):
            for _ in range(inner_iter):
                q = solve_ot(cost(i, p), ot_method, reg, sinkhorn_iter, warm[i])
                unconverged += not warm[i].converged
                change = coupling_change([q], [p])
                p = q
                if change < tol:
                    break
            updated.append(p)
        x = project(updated, ys, weights)
        hbar = project_structure(updated, hs, weights)
        change = coupling_change(updated, couplings)
        couplings = updated
        if change < tol:
            converged = True
            break
    total = sum(w * inner(p, cost(i, p)) for i, (p, w) in enumerate(zip(couplings, weights)))
    return GWBarycenterResult(x, hbar, couplings, it, converged, total, unconverged)
