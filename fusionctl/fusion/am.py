"""`solver=am`: activation matching (Git Re-Basin; REPAIR's correlation matching).

Each group's units are matched to model 0's by one linear assignment on the correlation of
their pre-activations over act_samples training inputs; groups are independent.
"""

from __future__ import annotations

import torch

from fusionctl.config import AMSettings
from fusionctl.errors import FusionctlError
from fusionctl.fusion.engine import FusionResult, fuse_with_couplings
from fusionctl.fusion.transport import identity_couplings
from fusionctl.ot.solver import assignment, perm_coupling


def correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(n, m) Pearson correlation between the rows of a (n, N) and b (m, N)."""
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    a = a / (a.norm(dim=1, keepdim=True) + 1e-12)
    b = b / (b.norm(dim=1, keepdim=True) + 1e-12)
    return a @ b.T


def fuse_am(spec, states, weights, target_sizes, settings: AMSettings, ctx) -> FusionResult:
    if any(spec.group_sizes(s) != target_sizes for s in states):
        raise FusionctlError("solver=am matches permutations and needs equal widths; use solver=wb for other widths")
    if ctx.activations is None:
        raise FusionctlError("solver=am needs training data to probe activations")
    feats = ctx.activations(states, settings.act_samples)  # z-scored: inner products are correlations
    couplings = [identity_couplings(spec, s) for s in states]
    for i in range(1, len(states)):
        for group in spec.groups:
            corr = feats[0][group] @ feats[i][group].T
            couplings[i][group] = perm_coupling(assignment(-corr.cpu().numpy(), spec.blocks(group), spec.within(group)))
    return fuse_with_couplings(spec, states, weights, couplings)
