"""`solver=gwb`: Gromov-Wasserstein barycenter fusion for recurrent networks (METHOD.md B.3-B.4).

Groups whose units feed back into themselves (recurrent hidden states) are matched on their
input weights and, through the Gromov-Wasserstein term, on their hidden-to-hidden weights;
every other group is fused exactly as by `wb`.
"""

from __future__ import annotations

from fusionctl.errors import FusionctlError
from fusionctl.fusion.engine import FusionResult
from fusionctl.fusion.wb import fuse_barycenter


def fuse_gwb(spec, states, weights, target_sizes, solver, ctx) -> FusionResult:
    if not solver.alpha >= 0:
        raise FusionctlError(f"solver.alpha must be >= 0, got {solver.alpha}")
    return fuse_barycenter(spec, states, weights, target_sizes, solver, ctx, alpha=solver.alpha)
