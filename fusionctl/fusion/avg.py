"""`solver=avg`: vanilla averaging (FedAvg), no alignment."""

from __future__ import annotations

from fusionctl.fusion.engine import FusionResult, fuse_with_couplings
from fusionctl.fusion.transport import identity_couplings


def fuse_avg(spec, states, weights, target_sizes, settings, ctx) -> FusionResult:
    couplings = [identity_couplings(spec, s) for s in states]
    return fuse_with_couplings(spec, states, weights, couplings)
