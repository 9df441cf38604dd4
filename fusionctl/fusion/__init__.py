"""Fusion methods: each turns (spec, base states, weights, target sizes, its own settings) into a fused state and couplings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from fusionctl.config import SOLVERS, SolverSettings, solver_settings
from fusionctl.errors import FusionctlError
from fusionctl.fusion.am import fuse_am
from fusionctl.fusion.avg import fuse_avg
from fusionctl.fusion.c2m3 import fuse_c2m3
from fusionctl.fusion.concat import fuse_split
from fusionctl.fusion.engine import FusionContext, FusionResult
from fusionctl.fusion.gwb import fuse_gwb
from fusionctl.fusion.otfusion import fuse_ot
from fusionctl.fusion.transport import interpolate, transport, weighted_average
from fusionctl.fusion.wb import fuse_wb
from fusionctl.fusion.wm import fuse_wm
from fusionctl.fusion.zipit import fuse_zipit


@dataclass(frozen=True)
class Method:
    fuse: Callable[..., FusionResult]
    settings: type[SolverSettings]  # the only settings the method reads
    equal_widths: bool  # permutes (or only averages): every base model and the target have one width per group
    aligns: bool = True  # maps each model onto the fused units (a line from model 1 to model 2 aligned exists); zipit merges


METHODS = {name: Method(fn, SOLVERS[name], name in ("wm", "c2m3", "am", "avg"), name != "zipit") for name, fn in {
    "wb": fuse_wb, "gwb": fuse_gwb, "ot": fuse_ot, "wm": fuse_wm, "c2m3": fuse_c2m3, "am": fuse_am, "zipit": fuse_zipit,
    "avg": fuse_avg}.items()}


def check_widths(method: str, spec, states, target_sizes) -> None:
    """One line if `method` cannot fuse these models into these widths."""
    for i, s in enumerate(states if METHODS[method].equal_widths else ()):
        if spec.group_sizes(s) != target_sizes:
            raise FusionctlError(f"solver={method} needs every base model and the target to have the same widths "
                                 f"(model {i}: {spec.group_sizes(s)}, target: {target_sizes}); use solver=wb, gwb, ot or zipit")


def fuse(method: str, spec, states, weights, target_sizes, settings: SolverSettings | None = None, ctx: FusionContext | None = None) -> FusionResult:
    """Fuse base states with `method` (its default settings unless given); weights are normalised lambdas."""
    if method not in METHODS:
        raise FusionctlError(f"unknown solver '{method}'; choose from: {', '.join(METHODS)}")
    settings = settings if settings is not None else solver_settings(method)
    if type(settings) is not METHODS[method].settings:
        raise FusionctlError(f"solver '{method}' reads {METHODS[method].settings.__name__}, got {type(settings).__name__}")
    settings.check()
    if len(states) < 1:
        raise FusionctlError("fusion needs at least one base model")
    check_widths(method, spec, states, target_sizes)
    fuse_fn = METHODS[method].fuse
    if spec.concat:  # every method runs on the concatenated entries' pieces
        return fuse_split(fuse_fn, spec, states, weights, target_sizes, settings, ctx or FusionContext())
    return fuse_fn(spec, states, weights, target_sizes, settings, ctx or FusionContext())


def check_aligns(method: str, what: str) -> None:
    """One line where `what` needs model 2 aligned to model 1 and `method` merges units instead."""
    if method in METHODS and not METHODS[method].aligns:
        raise FusionctlError(f"{what} follows the line from model 1 to model 2 aligned to it; solver={method} merges units "
                             "(several of one model into one) and aligns no model to another; choose solver=wb, wm, am, c2m3 or ot")


__all__ = ["METHODS", "check_aligns", "check_widths", "FusionContext", "FusionResult", "fuse", "interpolate", "transport", "weighted_average"]
