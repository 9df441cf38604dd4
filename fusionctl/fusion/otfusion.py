"""`solver=ot`: Singh & Jaggi (2020) OT fusion, one anchored pass (METHOD.md E.3).

Each model is aligned once to a fixed anchor (model 0, or a random target when the widths
change, as in the authors' baseline), then the aligned models are averaged. In barycenter
terms this is exactly one OT step plus projection from the anchor's support.
"""

from __future__ import annotations

from fusionctl.fusion.engine import FusionResult, barycenter_couplings, fuse_with_couplings
from fusionctl.fusion.wb import initial_support


def fuse_ot(spec, states, weights, target_sizes, solver, random_target) -> FusionResult:
    same = spec.group_sizes(states[0]) == target_sizes
    init = solver.init if solver.init != "auto" else ("model0" if same else "random")
    anchor, in_target = initial_support(init, spec, states, target_sizes, random_target, solver)
    couplings, info = barycenter_couplings(
        spec, states, weights, anchor, in_target,
        ot_method=solver.ot, reg=solver.reg, max_iter=1, tol=solver.tol, sinkhorn_iter=solver.sinkhorn_iter,
    )
    return fuse_with_couplings(spec, states, weights, couplings, info)
