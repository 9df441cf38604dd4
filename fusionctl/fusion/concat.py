"""Fusing a model with concatenated axes: every method runs on its split pieces (models/concat.py)."""

from __future__ import annotations

from dataclasses import replace

from fusionctl.fusion.engine import FusionContext, FusionResult
from fusionctl.models.concat import join_state, split_spec, split_state
from fusionctl.models.spec import AlignmentSpec


def fuse_split(fuse_fn, spec: AlignmentSpec, states, weights, target_sizes, settings, ctx: FusionContext) -> FusionResult:
    """fuse_fn on the split states and spec, so it sees plain groups; the context's callbacks (probes,
    scoring, a random target) and the result see the model's own entries."""

    def join(state):
        return join_state(spec, state)

    def joined(result: FusionResult) -> FusionResult:
        aligned = None if result.aligned is None else [join(s) for s in result.aligned]
        return replace(result, state=join(result.state), aligned=aligned)

    inner = replace(
        ctx,
        random_target=ctx.random_target and (lambda: split_state(spec, ctx.random_target())),
        activations=ctx.activations and (lambda states, *args, **kw: ctx.activations([join(s) for s in states], *args, **kw)),
        score=ctx.score and (lambda result: ctx.score(joined(result))),
    )
    return joined(fuse_fn(split_spec(spec), [split_state(spec, s) for s in states], weights, target_sizes, settings, inner))
