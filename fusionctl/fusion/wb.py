"""`solver=wb`: Wasserstein-barycenter fusion (Akash, Li & Garcia Trillos, METHOD.md A).

sweeps=0 cost=weight is the paper's algorithm: group by group, input to output, a
free-support barycenter of the models' incoming rows started from model 0's. The default
adds whole-network sweeps (sweeps.py), where every group is re-coupled on all the weights it
indexes, and keeps the better of two node costs on held-out data (cost=auto).
"""

from __future__ import annotations

from fusionctl.config import WBSettings
from fusionctl.fusion.barycenter import fuse_barycenter
from fusionctl.fusion.engine import FusionContext, FusionResult
from fusionctl.models.spec import AlignmentSpec


def fuse_wb(spec: AlignmentSpec, states, weights, target_sizes, settings: WBSettings, ctx: FusionContext) -> FusionResult:
    """Recurrent weights, if any, are ignored while matching (the no-hidden ablation)."""
    return fuse_barycenter(spec, states, weights, target_sizes, settings, ctx)
