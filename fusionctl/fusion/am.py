"""`solver=am`: activation matching (Git Re-Basin; REPAIR's correlation matching).

Each group's units are matched to model 0's by one linear assignment on the correlation of
their pre-activations over act_samples training inputs; groups are independent. A group no
module outputs (stacked expert weights) is matched afterwards on its weights, the other groups'
couplings applied, as weight matching would, in rounds until none changes where several such groups
read each other (a mixture's experts and their hidden units).
"""

from __future__ import annotations

import logging

import torch

from fusionctl.config import AMSettings
from fusionctl.errors import FusionctlError
from fusionctl.fusion.engine import FusionResult, fuse_with_couplings, group_features
from fusionctl.fusion.transport import identity_couplings
from fusionctl.fusion.units import unobserved
from fusionctl.ot.permutation import same
from fusionctl.ot.solver import assignment_coupling

log = logging.getLogger(__name__)

UNSEEN_ROUNDS = 20  # cap on the rounds of matching the unseen groups on their weights


def correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(n, m) Pearson correlation between the rows of a (n, N) and b (m, N)."""
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    a = a / (a.norm(dim=1, keepdim=True) + 1e-12)
    b = b / (b.norm(dim=1, keepdim=True) + 1e-12)
    return a @ b.T


def fuse_am(spec, states, weights, target_sizes, settings: AMSettings, ctx) -> FusionResult:
    if ctx.activations is None:
        raise FusionctlError("solver=am needs training data to probe activations")
    feats = ctx.activations(states, settings.act_samples)  # z-scored: inner products are correlations
    couplings = [identity_couplings(spec, s) for s in states]
    unseen = unobserved(spec)
    if unseen:
        log.info("am: %s show their units in no module's output; matched on their weights", ", ".join(unseen))
    for i in range(1, len(states)):
        for group in [g for g in spec.groups if g not in unseen]:
            sim = feats[0][group] @ feats[i][group].T
            couplings[i][group] = assignment_coupling(-sim, spec.blocks(group), spec.within(group))
        for _ in range(UNSEEN_ROUNDS):  # unseen groups read each other's couplings (experts and their hidden units): until none changes
            changed = False
            for group in unseen:
                sim = group_features(states[0], spec, group, couplings[0]) @ group_features(states[i], spec, group, couplings[i]).T
                new = assignment_coupling(-sim, spec.blocks(group), spec.within(group))
                changed |= not same(new, couplings[i][group])
                couplings[i][group] = new
            if not changed:
                break
        else:
            log.info("am: the groups matched on weights still moved after %d rounds; kept the last", UNSEEN_ROUNDS)
    return fuse_with_couplings(spec, states, weights, couplings)
