"""Fusion methods: each turns (spec, base states, weights, target sizes) into a fused state and couplings."""

from __future__ import annotations

from fusionctl.errors import FusionctlError
from fusionctl.fusion.am import fuse_am
from fusionctl.fusion.avg import fuse_avg
from fusionctl.fusion.engine import FusionContext, FusionResult
from fusionctl.fusion.gwb import fuse_gwb
from fusionctl.fusion.otfusion import fuse_ot
from fusionctl.fusion.transport import interpolate, transport, weighted_average
from fusionctl.fusion.wb import fuse_wb
from fusionctl.fusion.wm import fuse_wm

METHODS = {"wb": fuse_wb, "gwb": fuse_gwb, "ot": fuse_ot, "wm": fuse_wm, "am": fuse_am, "avg": fuse_avg}


def fuse(method: str, spec, states, weights, target_sizes, solver, ctx: FusionContext | None = None) -> FusionResult:
    """Fuse base states with `method`; weights are normalised lambdas."""
    if method not in METHODS:
        raise FusionctlError(f"unknown solver '{method}'; choose from: {', '.join(METHODS)}")
    if len(states) < 1:
        raise FusionctlError("fusion needs at least one base model")
    if solver.ot not in ("exact", "sinkhorn"):
        raise FusionctlError(f"unknown solver.ot '{solver.ot}'; choose from: exact, sinkhorn")
    if solver.ot == "sinkhorn" and not solver.reg > 0:
        raise FusionctlError(f"solver.reg must be > 0 for sinkhorn, got {solver.reg}")
    return METHODS[method](spec, states, weights, target_sizes, solver, ctx or FusionContext())


__all__ = ["METHODS", "FusionContext", "FusionResult", "fuse", "interpolate", "transport", "weighted_average"]
