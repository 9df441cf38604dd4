"""`solver=wb`: layer-wise Wasserstein-barycenter fusion (Akash, Li & Garcia Trillos, METHOD.md A)."""

from __future__ import annotations

from fusionctl.errors import FusionctlError
from fusionctl.fusion.engine import FusionContext, FusionResult, State, barycenter_couplings, fuse_with_couplings
from fusionctl.models.spec import AlignmentSpec

INITS = ("auto", "model0", "random", "distill")
COSTS = ("weight", "activation")


def initial_support(init, spec, states, target_sizes, ctx: FusionContext, solver) -> tuple[State, bool]:
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
        return _random(ctx), True
    if init == "distill":
        # K = 1 pass of model 0 into a random target of the new widths (METHOD.md A.4).
        couplings, _ = barycenter_couplings(
            spec, [states[0]], [1.0], _random(ctx), True,
            ot_method=solver.ot, reg=solver.reg, max_iter=solver.max_iter, tol=solver.tol,
            sinkhorn_iter=solver.sinkhorn_iter,
        )
        return fuse_with_couplings(spec, [states[0]], [1.0], couplings).state, True
    raise FusionctlError(f"unknown solver.init '{init}'; choose from: {', '.join(INITS)}")


def _random(ctx: FusionContext) -> State:
    if ctx.random_target is None:
        raise FusionctlError("this fusion needs a random target model (solver.init=random|distill) but none was provided")
    return ctx.random_target()


def activation_features(states, init_state, ctx: FusionContext, cost: str):
    """Per-group activations of the bases and the init, when solver.cost=activation."""
    if cost not in COSTS:
        raise FusionctlError(f"unknown solver.cost '{cost}'; choose from: {', '.join(COSTS)}")
    if cost == "weight":
        return None, None
    if ctx.activations is None:
        raise FusionctlError("solver.cost=activation needs training data to probe activations")
    return [ctx.activations(s) for s in states], ctx.activations(init_state)


def fuse_barycenter(spec: AlignmentSpec, states, weights, target_sizes, solver, ctx: FusionContext, alpha=None, max_iter=None) -> FusionResult:
    init_state, in_target = initial_support(solver.init, spec, states, target_sizes, ctx, solver)
    acts, init_acts = activation_features(states, init_state, ctx, solver.cost)
    couplings, info = barycenter_couplings(
        spec, states, weights, init_state, in_target,
        ot_method=solver.ot, reg=solver.reg, max_iter=max_iter or solver.max_iter, tol=solver.tol,
        sinkhorn_iter=solver.sinkhorn_iter, alpha=alpha, inner_iter=solver.inner_iter,
        activations=acts, init_activations=init_acts, device=ctx.device if solver.ot == "sinkhorn" else "cpu",
    )
    return fuse_with_couplings(spec, states, weights, couplings, info)


def fuse_wb(spec: AlignmentSpec, states, weights, target_sizes, solver, ctx: FusionContext) -> FusionResult:
    """Recurrent weights, if any, are ignored while matching (the no-hidden ablation)."""
    return fuse_barycenter(spec, states, weights, target_sizes, solver, ctx)
