"""`solver=gwb`: Gromov-Wasserstein barycenter fusion for recurrent networks (METHOD.md B.3-B.4).

Groups whose units feed back into themselves (recurrent hidden states) are matched on their
input weights and, through the Gromov-Wasserstein term, on their hidden-to-hidden weights;
every other group is fused exactly as by `wb`. With sweeps > 0 the hidden-to-hidden weights
stay in every sweep's cost, weighted by alpha and linearised at the current coupling.
"""

from __future__ import annotations

from fusionctl.config import GWBSettings
from fusionctl.fusion.barycenter import fuse_barycenter
from fusionctl.fusion.engine import FusionResult


def fuse_gwb(spec, states, weights, target_sizes, settings: GWBSettings, ctx) -> FusionResult:
    return fuse_barycenter(spec, states, weights, target_sizes, settings, ctx, alpha=settings.alpha)
