"""`solver=avg`: vanilla averaging (FedAvg), no alignment."""

from __future__ import annotations

from fusionctl.errors import FusionctlError
from fusionctl.fusion.engine import FusionResult, fuse_with_couplings
from fusionctl.fusion.transport import identity_couplings


def fuse_avg(spec, states, weights, target_sizes, settings, ctx) -> FusionResult:
    for i, s in enumerate(states):
        if spec.group_sizes(s) != target_sizes:
            raise FusionctlError(
                f"solver=avg needs every base model and the target to have the same widths "
                f"(model {i}: {spec.group_sizes(s)}, target: {target_sizes}); use solver=wb or ot"
            )
    couplings = [identity_couplings(spec, s) for s in states]
    return fuse_with_couplings(spec, states, weights, couplings)
