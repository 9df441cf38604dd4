"""The barycenter methods' common driver (wb, gwb and ot, its one-pass case), next to the engine.

It picks the initial support (model 0, a random target, or model 0 distilled into other widths),
weighs weight and activation costs, and runs either the paper's layer-wise pass (engine.py) or
the layer-wise pass plus whole-network sweeps (sweeps.py); cost=auto tries two costs. When the
cost probed activations, the fused BatchNorm variances are predicted from them (norm_stats.py).
"""

from __future__ import annotations

import logging
from dataclasses import replace

import torch

from fusionctl.config import BarycenterBlock
from fusionctl.errors import FusionctlError
from fusionctl.fusion.engine import (
    FusionContext,
    FusionResult,
    State,
    barycenter_couplings,
    fuse_with_couplings,
    group_features,
)
from fusionctl.fusion.norm_stats import predicted_running_vars
from fusionctl.fusion.sweeps import NetworkBarycenter, OTSetup
from fusionctl.fusion.units import unobserved
from fusionctl.models.spec import AlignmentSpec
from fusionctl.ot.barycenter import coupling_change

log = logging.getLogger(__name__)


def initial_support(init, spec, states, target_sizes, ctx: FusionContext, settings) -> tuple[State, bool]:
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
    # distill: a K = 1 pass of model 0 into a random target of the new widths (METHOD.md A.4)
    couplings, _ = barycenter_couplings(
        spec, [states[0]], [1.0], _random(ctx), True,
        ot_method=settings.ot, reg=settings.reg, max_iter=getattr(settings, "max_iter", 100), tol=getattr(settings, "tol", 1e-5),
        sinkhorn_iter=settings.sinkhorn_iter,
    )
    return fuse_with_couplings(spec, [states[0]], [1.0], couplings).state, True


def _random(ctx: FusionContext) -> State:
    if ctx.random_target is None:
        raise FusionctlError("this fusion needs a random target model (solver.init=random|distill) but none was provided")
    return ctx.random_target()


def cost_weights(settings: BarycenterBlock, spec: AlignmentSpec, states: list[State]) -> tuple[dict[str, float] | None, float]:
    """(w_key per entry or None for plain weights, activation weight) for solver.cost.

    cost=both puts the two costs on one scale before mixing: an entry is weighted by the mean,
    over the groups it touches, of 1 / (twice the mean squared norm of a node's weight features),
    and z-scored activations (unit norm) by 1/2, so a random pair of nodes costs about 1 in each.
    cost=activation weighs only recurrent weights (gwb's hidden-to-hidden term), on that scale.
    """
    if settings.cost == "weight":
        return None, 0.0
    recurrent = {key for key in spec.axes if spec.structure(key)}
    if settings.cost == "activation" and not recurrent:
        return {key: 0.0 for key in spec.axes}, 1.0
    mix = 0.0 if settings.cost == "activation" else settings.cost_mix
    norms: dict[str, float] = {g: 0.0 for g in spec.groups}
    touching: dict[str, list[str]] = {}
    for key, axes in spec.axes.items():
        groups = list(dict.fromkeys(a.group for a in axes if a is not None))
        touching[key] = groups
        square = sum(float(torch.dot(v := s[key].reshape(-1).double(), v)) for s in states) / len(states) if groups else 0.0
        for dim, ax in enumerate(axes):
            if ax is not None:
                norms[ax.group] += square / ax.nodes(states[0][key].shape[dim])
    inv = {g: 1.0 / (2.0 * v) if v > 0 else 0.0 for g, v in norms.items()}
    weights = {key: (1.0 - mix) * sum(inv[g] for g in groups) / len(groups) if groups else 0.0 for key, groups in touching.items()}
    if settings.cost == "activation":  # recurrent weights only (gwb's hidden term), on the scale cost=both gives them
        return {key: w if key in recurrent else 0.0 for key, w in weights.items()}, 1.0
    return weights, mix / 2.0


def activation_features(settings: BarycenterBlock, ctx: FusionContext, spec: AlignmentSpec, states: list[State], init_state: State | None):
    """Per state {group: z-scored features} (and the init's, if it is not model 0), when the cost
    uses them, and per state {writer: features} for the BatchNorms whose variances are predicted
    from their own writer's outputs (norm_stats.py), from the same pass over the inputs."""
    if settings.cost == "weight":
        return None, None, None
    if ctx.activations is None:
        raise FusionctlError(f"solver.cost={settings.cost} needs training data to probe activations")
    if settings.cost == "activation" and (unseen := unobserved(spec)):
        log.info("cost=activation: %s show their units in no module's output, so nothing aligns them (cost=both does, "
                 "on weights)", ", ".join(unseen))
    writers = shared_norm_writers(spec, states[0]) if settings.norm_stats == "predict" else ()
    probed = ctx.activations(states + ([init_state] if init_state is not None else []), settings.act_samples, writers)
    probed, apart = probed if writers else (probed, None)
    return probed[: len(states)], (probed[-1] if init_state is not None else probed[0]), apart[: len(states)] if apart else None


def same_couplings(a: list[dict], b: list[dict]) -> bool:
    """Whether two alignments couple every model's every group identically (so they fuse to one model)."""
    return all(p.keys() == q.keys() and all(coupling_change([p[g]], [q[g]]) == 0 for g in p) for p, q in zip(a, b))


def shared_norm_writers(spec: AlignmentSpec, state: State) -> tuple[str, ...]:
    """Writers followed by a BatchNorm in a group that several writers share (a residual stream):
    the group's features pool them all, so their variances need each writer's own."""
    return tuple(u.writer for g in spec.groups for u in spec.units.get(g, ())
                 if len(spec.units[g]) > 1 and f"{u.norm}.running_var" in state)


def fuse_barycenter(spec: AlignmentSpec, states, weights, target_sizes, settings: BarycenterBlock, ctx: FusionContext,
                    alpha: float | None = None, passes: int | None = None) -> FusionResult:
    """passes=1: one anchored pass (OT fusion); otherwise settings.max_iter rounds and settings.sweeps sweeps.

    cost=auto aligns twice, with cost=both and with cost=activation, and keeps cost=activation only
    if it is more accurate on the scoring inputs (ctx.score, after the family's post-step; the fuse
    command's are training inputs the alignment and REPAIR did not read): weights and activations
    together align MLPs best, activations alone many deep convolutional and recurrent nets; neither
    wins everywhere. A net with groups no module outputs keeps cost=both: activations cannot align those.
    """
    if settings.cost == "auto" and (ctx.score is None or ctx.activations is None):
        log.info("cost=auto needs data to probe activations and score candidates; none was given, so the cost is weights only")
        settings = replace(settings, cost="weight")
    if settings.cost == "auto" and (unseen := unobserved(spec)):
        log.info("cost=auto: %s show their units in no module's output, which cost=activation cannot align; keeping cost=both",
                 ", ".join(unseen))
        result = fuse_barycenter(spec, states, weights, target_sizes, replace(settings, cost="both"), ctx, alpha, passes)
        result.sweeps["selected_cost"] = "both"
        return result
    if settings.cost == "auto":
        memo: dict = {}

        def probe(sts, n, writers=()):  # both candidates read the same activations
            key = (tuple(map(id, sts)), n, tuple(writers))
            if key not in memo:
                memo[key] = ctx.activations(sts, n, writers)
            return memo[key]

        once = replace(ctx, activations=probe if ctx.activations is not None else None)
        candidates = [fuse_barycenter(spec, states, weights, target_sizes, replace(settings, cost=c), once, alpha, passes)
                      for c in ("both", "activation")]
        scored = f"accuracy after {ctx.score_after}" if ctx.score_after else "accuracy (no post-step)"
        if same_couplings(*(r.couplings for r in candidates)):  # one fused model: nothing to choose between
            pick = 0
            log.info("cost=auto: cost=both and cost=activation align the same way (%s %.4f)", scored, ctx.score(candidates[0]).accuracy)
        else:
            both, act = (ctx.score(r) for r in candidates)
            pick = int(act.beats(both))
            log.info("cost=auto: %s %.4f with cost=both, %.4f with cost=activation (mean loss %.4f and %.4f on %d scoring inputs); "
                     "keeping cost=%s", scored, both.accuracy, act.accuracy, both.loss, act.loss, both.losses.numel(), ("both", "activation")[pick])
        result = candidates[pick]
        result.sweeps["selected_cost"] = ("both", "activation")[pick]
        return result
    init_state, in_target = initial_support(settings.init, spec, states, target_sizes, ctx, settings)
    key_weights, act_weight = cost_weights(settings, spec, [s for s, w in zip(states, weights) if w > 0])  # the scales of what is fused
    acts, init_acts, writer_acts = activation_features(settings, ctx, spec, states, init_state if in_target else None)
    device = ctx.device  # costs, Sinkhorn and barycenter updates; an exact assignment itself solves on the CPU
    max_iter = passes or settings.max_iter
    sweeps = 0 if passes else settings.sweeps
    couplings, info = None, {}
    if sweeps == 0 or alpha is not None:
        couplings, info = barycenter_couplings(
            spec, states, weights, init_state, in_target,
            ot_method=settings.ot, reg=settings.reg, max_iter=max_iter, tol=getattr(settings, "tol", 1e-5),
            sinkhorn_iter=settings.sinkhorn_iter, alpha=alpha, inner_iter=getattr(settings, "inner_iter", 50),
            key_weights=key_weights, acts=acts, init_acts=init_acts, act_weight=act_weight, device=device,
        )
        if sweeps == 0:
            return with_norm_stats(fuse_with_couplings(spec, states, weights, couplings, info), spec, states, weights, acts, writer_acts, settings)
    ot = OTSetup(settings.ot, settings.reg, settings.sinkhorn_iter, settings.max_iter, settings.tol)
    net = NetworkBarycenter(spec, states, weights, target_sizes, ot, couplings, key_weights, acts, act_weight, alpha, settings.seed, device)
    if couplings is None:
        def support(group, known):
            x = group_features(init_state, spec, group, None, key_weights, known)
            return torch.cat([x, init_acts[group] * act_weight**0.5], 1) if net.acts is not None else x

        net.forward(support if in_target else None)
    summary = run_sweeps(net, sweeps, settings.tol)
    net.align_rest()
    couplings, done = net.result(), net.moved_entries(states)
    del net  # its kept costs and float32 copies of the models are not needed to fuse: free them first
    result = fuse_with_couplings(spec, states, weights, couplings, info, done)
    result.sweeps = summary
    return with_norm_stats(result, spec, states, weights, acts, writer_acts, settings)


def with_norm_stats(result: FusionResult, spec: AlignmentSpec, states, weights, acts, writer_acts, settings) -> FusionResult:
    """The fused BatchNorm variances predicted from the probed correlations (norm_stats.py) when
    the cost probed them: a writer's own features where a group has several (writer_acts,
    activation_features), else its group's."""
    if acts is None or settings.norm_stats != "predict":
        return result
    per_writer = [{u.writer: (apart or {}).get(u.writer, a[g]) for g in spec.groups for u in spec.units.get(g, ())}
                  for a, apart in zip(acts, writer_acts or [None] * len(acts))]
    result.state.update(predicted_running_vars(spec, states, weights, result.couplings, per_writer, result.state))
    return result


def run_sweeps(net: NetworkBarycenter, sweeps: int, tol: float, patience: int = 3) -> dict:
    """Sweep at most `sweeps` times and keep the best state visited (lowest J): stop when a sweep
    changes nothing, or after `patience` sweeps in a row that did not lower the best J by tol relative."""
    if len(net.active) < 2 or (len(net.active) == 2 and net.ot.method == "exact" and net.separable()):
        sweeps = 0  # nothing to align, or the layer-wise pass is already optimal
    start = best_value = value = net.objective()
    best = net.snapshot()
    done, converged, stale = 0, sweeps == 0, 0
    for done in range(1, sweeps + 1):
        changed = net.sweep()
        value = net.objective() if changed else value  # an unchanged state keeps its J
        stale = 0 if value < best_value * (1 - tol) else stale + 1
        if value < best_value:
            best, best_value = net.snapshot(), value
        log.info("sweep %d: objective %.6g, best %.6g (%+.3g%% from the layer-wise pass), %d couplings changed",
                 done, value, best_value, 100 * (best_value - start) / max(start, 1e-300), changed)
        if changed == 0 or stale >= patience:
            converged = True
            break
    net.restore(best)
    if not converged:  # K > 2 explores until its budget is spent: expected, not an error
        log.info("wb: stopped at the cap solver.sweeps=%d with the objective still falling; raise solver.sweeps to search longer", sweeps)
    return {"sweeps": done, "converged": converged, "objective_start": start, "objective": best_value, "unconverged_solves": net.unconverged}
