"""`solver=zipit`: ZipIt! (Stoica et al., ICLR 2024), units merged within and across models.

Per group, the units of every model of weight > 0 are pooled and merged greedily, the most
correlated pair of clusters first (pre-activation correlations, as am reads them), until the
target's width is left. A cluster's similarity to another is the least over their members
(complete linkage), times `alpha` for each merge it took part in (the paper's repeated matching:
a cluster grows only where nothing fresher fits). A merge that puts two units of one model
together spends that model's budget of beta x (units removed) / K merges (same-model merges).

A fused unit is the lambda-weighted mean of its members, and a later layer reads it wherever it
read any of them (ot.permutation.Merge). So two units of one model that compute the same
function become one, and its fusion with itself keeps the function at fewer units; between
permuted copies every merge is a cross-model pair, a permutation. Base models may have any
widths, and the target any width up to their sum. Units move freely, so heads and grouped
convolutions, which move only as whole blocks, are refused.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from fusionctl.config import ZipItSettings
from fusionctl.errors import FusionctlError
from fusionctl.fusion.engine import FusionContext, FusionResult, fuse_with_couplings
from fusionctl.fusion.units import unobserved
from fusionctl.models.spec import AlignmentSpec
from fusionctl.ot.permutation import Merge

log = logging.getLogger(__name__)


def zip_units(feats: list[torch.Tensor], width: int, alpha: float, beta: float) -> tuple[list[np.ndarray], int]:
    """(per model, the fused unit 0 .. width-1 of each of its units; the merges made beyond the
    budget) from (n_i, d) features whose inner products are correlations. Where only merges
    within spent models are left, the budget gives way, so the width asked for is reached. Fused
    units are ordered by their first unit (model 0's order where they hold one of its units)."""
    sizes = [f.shape[0] for f in feats]
    n, k = sum(sizes), len(sizes)
    pooled = torch.cat(feats).double()
    sim = (pooled @ pooled.T).numpy()  # complete-linkage similarity between clusters, at their representatives
    np.fill_diagonal(sim, -np.inf)
    holds = np.zeros((n, k), dtype=bool)  # per cluster, the models it has units of
    holds[np.arange(n), np.repeat(np.arange(k), sizes)] = True
    label, alive = np.arange(n), np.ones(n, dtype=bool)
    budget = np.full(k, int(beta * (n - width) / k + 1e-9))
    spent = budget <= 0
    best, value = np.zeros(n, dtype=np.int64), np.full(n, -np.inf)

    def refresh(rows: np.ndarray) -> None:  # each row's most similar cluster it may merge with
        if rows.size:
            masked = sim[rows]
            if spent.any():
                spent_of = holds[:, spent].astype(np.float32)
                masked[spent_of[rows] @ spent_of.T > 0] = -np.inf
            best[rows] = masked.argmax(1)
            value[rows] = masked[np.arange(rows.size), best[rows]]

    refresh(np.arange(n))
    beyond, lifted = 0, False
    for _ in range(n - width):
        r = int(np.argmax(value))
        if value[r] == -np.inf:  # every merge left joins two units of a spent model: the budget gives way
            spent[:], lifted = False, True
            refresh(np.flatnonzero(alive))
            r = int(np.argmax(value))
        c = int(best[r])
        shared = holds[r] & holds[c]
        beyond += bool((shared & (budget <= 0)).any())
        budget[shared] -= 1
        newly = shared & (budget <= 0) & ~spent & (not lifted)
        spent |= newly
        holds[r] |= holds[c]
        holds[c] = False
        label[label == c] = r
        row = np.minimum(sim[r], sim[c]) * alpha
        alive[c] = False
        row[r] = row[c] = -np.inf
        sim[c, :] = sim[:, c] = -np.inf
        sim[r, :] = sim[:, r] = row
        value[c] = -np.inf
        stale = (best == r) | (best == c)
        stale[r] = True
        if newly.any():  # rows whose best shares a model that is now spent
            stale |= holds[:, newly].any(1) & holds[best][:, newly].any(1)
        stale &= alive
        take = alive & ~stale & (sim[:, r] > value) & ~holds[:, spent & holds[r]].any(1)
        best[take], value[take] = r, sim[take, r]
        refresh(np.flatnonzero(stale))
    first = np.full(n, n)
    np.minimum.at(first, label, np.arange(n))  # each cluster's first unit, at its representative
    reps = np.flatnonzero(alive)
    order = np.empty(n, dtype=np.int64)
    order[reps[np.argsort(first[reps])]] = np.arange(reps.size)
    return list(np.split(order[label], np.cumsum(sizes)[:-1])), beyond


def check_zippable(spec: AlignmentSpec) -> None:
    """One line where units cannot merge freely or no activation shows them."""
    blocked = sorted({g for g in spec.groups if spec.blocks(g) > 1} | {g for _, g in spec.local.values()} | {g for _, g in spec.per_head.values()})
    if blocked:
        raise FusionctlError(f"solver=zipit merges single units, but {', '.join(blocked)} move only as whole heads or blocks "
                             "(attention, grouped convolutions); use solver=am, wm or wb")
    if unseen := unobserved(spec):
        raise FusionctlError(f"solver=zipit merges units by their activations, and {', '.join(unseen)} show their units in no "
                             "module's output; use solver=wm or wb")


def fuse_zipit(spec: AlignmentSpec, states, weights, target_sizes, settings: ZipItSettings, ctx: FusionContext) -> FusionResult:
    if ctx.activations is None:
        raise FusionctlError("solver=zipit needs training data to probe activations")
    check_zippable(spec)
    active = [i for i, w in enumerate(weights) if w > 0]
    feats = ctx.activations(states, settings.act_samples)
    couplings: list[dict] = [{} for _ in states]
    mixed = same = total = beyond = 0
    for group in spec.groups:
        width, pooled = target_sizes[group], sum(feats[i][group].shape[0] for i in active)
        if width > pooled:
            raise FusionctlError(f"solver=zipit merges units, so group {group} can have at most the {pooled} units its models have "
                                 f"together; choose a target width of at most {pooled}")
        clusters, over = zip_units([feats[i][group] for i in active], width, settings.alpha, settings.beta)
        beyond += over
        members = np.zeros((width, len(states)))
        for i, c in zip(active, clusters):
            np.add.at(members[:, i], c, 1)
        mass = torch.as_tensor(members @ np.asarray(weights, dtype=np.float64))
        for i, c in zip(active, clusters):
            couplings[i][group] = Merge(torch.as_tensor(c), 1.0 / mass)
        idle = [i for i in range(len(states)) if i not in active]
        if idle:  # weight 0: each unit joins the cluster whose members' features it correlates with most in sum
            summed = torch.zeros(width, feats[active[0]][group].shape[1], dtype=torch.float64)
            for j, c in zip(active, clusters):
                summed.index_add_(0, torch.as_tensor(c), feats[j][group].double())
            for i in idle:
                couplings[i][group] = Merge((feats[i][group].double() @ summed.T).argmax(1), 1.0 / mass)
        held = members[:, active] > 0
        mixed, same, total = mixed + int((held.sum(1) > 1).sum()), same + int((members[:, active] > 1).any(1).sum()), total + width
    log.info("zipit: %d of %d fused units merge several models' units, %d merge units of one model (solver.beta=%g)",
             mixed, total, same, settings.beta)
    if beyond:
        log.warning("zipit: the target widths took %d merges within one model beyond solver.beta=%g's budget; "
                    "raise solver.beta to allow them, or choose wider targets", beyond, settings.beta)
    return fuse_with_couplings(spec, states, weights, couplings)
