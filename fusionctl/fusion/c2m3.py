"""`solver=c2m3`: cycle-consistent merging through a universe, by Frank-Wolfe (after Crisostomi et al.,
C2M3, NeurIPS 2024).

Every model i is mapped into one universe by a coupling D_i^g per group, so the map between two
models, D_i D_j^T, is cycle-consistent by construction. The objective is weight matching's summed
over every pair, F = sum_{i<j} lambda_i lambda_j <T_i(theta_i), T_j(theta_j)>, relaxed from
permutations to doubly stochastic couplings. Frank-Wolfe from the identity (C2M3's default start):
the gradient of F with respect to every D_i^g at once is weight matching's similarity of model i's
group to the others' weighted sum in the universe (wm.group_similarity), so the best vertex is an
assignment per model and group; every coupling moves toward its vertex by the step in [0, 1] that
raises F most (a line search; F never falls), until the Frank-Wolfe gap is below tol relative to
F, no step raises F, or max_iter. Each coupling is then rounded to its closest permutation (an
assignment) and the models are averaged in the universe; where the pairwise matches of every model
to model 0 (MergeMany's start) have a higher F, those are kept instead. This maximises the pairwise
objective of the barycenter's sweeps with the weight cost (for permutations |theta_i|^2 is fixed)
by another optimiser; F of the rounded couplings is in `FusionResult.sweeps`.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from fusionctl.config import C2M3Settings
from fusionctl.fusion.engine import FusionResult, fuse_with_couplings
from fusionctl.fusion.transport import identity_couplings, transport, weighted_average
from fusionctl.fusion.wm import group_similarity, match
from fusionctl.models.spec import AlignmentSpec
from fusionctl.ot.permutation import dense
from fusionctl.ot.solver import assignment_coupling

log = logging.getLogger(__name__)


def pairwise_objective(spec: AlignmentSpec, thetas: list[dict], weights: list[float], couplings: list[dict]) -> float:
    """F = sum_{i<j} lambda_i lambda_j <T_i(theta_i), T_j(theta_j)>."""
    return objective_of([transport(t, spec, c) for t, c in zip(thetas, couplings)], weights)


def objective_of(moved: list[dict], weights: list[float]) -> float:
    """F of the transported models x_i = T_i(theta_i): (|sum_i lambda_i x_i|^2 - sum_i lambda_i^2 |x_i|^2) / 2."""
    total = 0.0
    for key in moved[0]:
        xs = [m[key].double() for m in moved]
        bar = sum(w * x for w, x in zip(weights, xs))
        total += 0.5 * (float((bar * bar).sum()) - sum(w * w * float((x * x).sum()) for w, x in zip(weights, xs)))
    return total


def vertex(sim: torch.Tensor, spec: AlignmentSpec, group: str):
    """The permutation (/ n) maximising <sim, P>: Frank-Wolfe's linear step, and the rounding of a coupling."""
    return assignment_coupling(-sim, spec.blocks(group), spec.within(group))


def between(coupling, corner, gamma: float):
    """(1 - gamma) coupling + gamma corner (the corner, a permutation, itself at gamma = 1)."""
    return corner if gamma == 1.0 else (1 - gamma) * dense(coupling) + gamma * dense(corner)


def line_search(couplings_at, measure, value: float):
    """(F, couplings, transported models) of the best step on [0, 1], where measure(couplings) gives
    that triple for those couplings. F along the segment is a polynomial of degree 4 where an entry
    has at most two grouped axes (each transported model is quadratic in gamma, F sums products of
    two): fitted through 5 points, its maximum on a fine grid is checked by one evaluation and kept
    if it beats the points themselves."""
    tried = {0.0: (value, None, None)}
    for gamma in np.linspace(0.0, 1.0, 5)[1:]:
        tried[float(gamma)] = measure(couplings_at(float(gamma)))
    poly = np.polynomial.Polynomial.fit(list(tried), [t[0] for t in tried.values()], 4)
    fine = np.linspace(0.0, 1.0, 1001)
    best = float(fine[np.argmax(poly(fine))])
    if best > 0 and best not in tried:
        tried[best] = measure(couplings_at(best))
    return tried[max(tried, key=lambda g: tried[g][0])]


def frank_wolfe(spec: AlignmentSpec, thetas: list[dict], weights: list[float], settings: C2M3Settings) -> tuple[list[dict], dict]:
    """Universe couplings of every model (rounded to permutations) and a summary of the search."""

    def measure(couplings):  # F, and the transported models it read: the next step's gradient reads them too
        moved = [transport(t, spec, c) for t, c in zip(thetas, couplings)]
        return objective_of(moved, weights), couplings, moved

    value, couplings, moved = measure([identity_couplings(spec, t) for t in thetas])  # C2M3's start: every model as it is
    trace, gap, done = [value], float("inf"), False
    for steps in range(settings.max_iter):
        total = weighted_average(moved, weights)
        gap, targets = 0.0, []
        for i, (theta, w) in enumerate(zip(thetas, weights)):
            others = {k: (total[k] - w * moved[i][k]) for k in total}  # sum_{j != i} lambda_j T_j(theta_j)
            target = {}
            for group in spec.groups:
                sim = group_similarity(spec, others, theta, couplings[i], group)
                target[group] = vertex(sim, spec, group)
                n = sim.shape[0]  # <sim, n D> is the linear part of <others, T_i(theta_i)> in D
                gap += w * n * float((sim.double() * (dense(target[group]) - dense(couplings[i][group]))).sum())
            targets.append(target)
        if gap <= settings.tol * max(abs(value), 1e-300):
            done = True
            break
        new, trial, trial_moved = line_search(lambda gamma: [{g: between(c[g], target[g], gamma) for g in spec.groups}
                                                             for c, target in zip(couplings, targets)], measure, value)
        if new <= value:  # no step along the Frank-Wolfe direction raises F: a stationary point as far as it can tell
            done = True
            break
        couplings, value, moved = trial, new, trial_moved
        trace.append(value)
        if steps % 10 == 0:
            log.info("c2m3: Frank-Wolfe step %d, objective %.6g, gap %.3g", steps + 1, value, gap)
    if not done:
        log.warning("c2m3: stopped at solver.max_iter=%d Frank-Wolfe steps with the gap %.3g of the objective above solver.tol=%g; "
                    "raise solver.max_iter to search longer", settings.max_iter, gap / max(abs(value), 1e-300), settings.tol)
    rounded = [{g: vertex(dense(c[g]).float(), spec, g) for g in spec.groups} for c in couplings]
    final = pairwise_objective(spec, thetas, weights, rounded)
    # from the identity the search can end in a mixture that rounds to none of the planted permutations
    # (copies of one model); where MergeMany's start, each model matched to model 0, scores higher, it is kept
    pairwise = [identity_couplings(spec, thetas[0])] + [match(spec, thetas[0], t) for t in thetas[1:]]
    if (alternative := pairwise_objective(spec, thetas, weights, pairwise)) > final:
        log.info("c2m3: the pairwise matches to model 0 score higher (%.6g) than the rounded search (%.6g); keeping them", alternative, final)
        rounded, final = pairwise, alternative
    return rounded, {"steps": len(trace) - 1, "converged": done, "objective_start": trace[0], "objective_relaxed": value,
                     "objective": final, "gap": gap, "trace": trace}


def fuse_c2m3(spec: AlignmentSpec, states, weights, target_sizes, settings: C2M3Settings, ctx) -> FusionResult:
    """Models of weight 0 are no part of F: each is matched afterwards to the fused model (weight matching)."""
    active = [i for i, w in enumerate(weights) if w > 0]
    keys = [k for k, axes in spec.axes.items() if any(a is not None for a in axes)]  # what a coupling moves
    thetas = [{k: states[i][k].to(torch.float32) for k in keys} for i in active]
    couplings = [identity_couplings(spec, s) for s in states]
    summary: dict = {}
    if len(active) > 1:
        found, summary = frank_wolfe(spec, thetas, [weights[i] for i in active], settings)
        for i, c in zip(active, found):
            couplings[i] = c
    result = fuse_with_couplings(spec, states, weights, couplings)
    for i in (i for i in range(len(states)) if i not in active):
        couplings[i] = match(spec, result.state, states[i])
    result.couplings, result.sweeps = couplings, summary
    return result
