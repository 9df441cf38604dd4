"""`solver=wb`: layer-wise Wasserstein-barycenter fusion (Akash, Li & Garcia Trillos, METHOD.md A)."""

from __future__ import annotations

from fusionctl.errors import FusionctlError
from fusionctl.fusion.engine import FusionResult, RandomTarget, State, barycenter_couplings, fuse_with_couplings
from fusionctl.models.spec import AlignmentSpec

INITS = ("auto", "model0", "random", "distill")


def initial_support(init, spec, states, target_sizes, random_target: RandomTarget, solver) -> tuple[State, bool]:
    """(init state, whether it is already in the target's basis) for init model0|random|distill."""
    same = spec.group_sizes(states[0]) == target_sizes
    if init == "auto":
        init = "model0" if same else "distill"
    if init == "model0":
        if not same:
            raise FusionctlError(
                "solver.init=model0 needs target.widths equal to model 0's widths; "
                "use solver.init=distill (or random) to fuse into other widths"
            )
        return states[0], False
    if init == "random":
        return random_target(), True
    if init == "distill":
        # K = 1 pass of model 0 into a random target of the new widths (METHOD.md A.4).
        couplings, _ = barycenter_couplings(
            spec, [states[0]], [1.0], random_target(), True,
            ot_method=solver.ot, reg=solver.reg, max_iter=solver.max_iter, tol=solver.tol,
            sinkhorn_iter=solver.sinkhorn_iter,
        )
        return fuse_with_couplings(spec, [states[0]], [1.0], couplings).state, True
    raise FusionctlError(f"unknown solver.init '{init}'; choose from: {', '.join(INITS)}")


def fuse_barycenter(spec: AlignmentSpec, states, weights, target_sizes, solver, random_target: RandomTarget, alpha=None) -> FusionResult:
    init_state, in_target = initial_support(solver.init, spec, states, target_sizes, random_target, solver)
    couplings, info = barycenter_couplings(
        spec, states, weights, init_state, in_target,
        ot_method=solver.ot, reg=solver.reg, max_iter=solver.max_iter, tol=solver.tol,
        sinkhorn_iter=solver.sinkhorn_iter, alpha=alpha, inner_iter=solver.inner_iter,
    )
    return fuse_with_couplings(spec, states, weights, couplings, info)


def fuse_wb(spec: AlignmentSpec, states, weights, target_sizes, solver, random_target: RandomTarget) -> FusionResult:
    """Recurrent weights, if any, are ignored while matching (the no-hidden ablation)."""
    return fuse_barycenter(spec, states, weights, target_sizes, solver, random_target)
