"""Where a network's units are observed, read from its alignment spec (never from its class).

Every group lists its units' writers (a Linear, a conv, one branch of a residual sum, a recurrent
layer) and the normalisation right after each (spec.Unit). Activation probes read the writers'
outputs, and the q/k/v projections inside attention blocks for their groups of heads
(spec.heads); REPAIR corrects at the norm, or at the writer when there is none.
"""

from __future__ import annotations

from collections.abc import Collection
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from fusionctl.fusion.features import CorrelationFeatures
from fusionctl.models.spec import AlignmentSpec


def channel_axis(module: nn.Module) -> int:
    """The axis of a writer's output that indexes its units: 1 for convolutions (N, C, ...), last otherwise."""
    return 1 if isinstance(module, nn.modules.conv._ConvNd) else -1


def point_axis(layer: nn.Module, norm: nn.Module | None) -> int:
    """The units' axis of what a repair point outputs: a LayerNorm's last (after a conv, a
    channels-last map: timm's Swin patch embedding), else its writer's channel axis."""
    return -1 if isinstance(norm, nn.LayerNorm) else channel_axis(layer)


def output_layer(module: nn.Module) -> nn.Module:
    """The module whose weight and bias write a writer's output: itself, or the output projection
    of an attention block (nn.MultiheadAttention keeps it in out_proj)."""
    return module.out_proj if isinstance(module, nn.MultiheadAttention) else module


def first_output(out):
    """A writer's output tensor (an attention block also returns its attention weights)."""
    return out[0] if isinstance(out, tuple) else out


def units_first(out: torch.Tensor, axis: int) -> torch.Tensor:
    """(n_units, observations): every other axis of `out` is an observation of the same units."""
    moved = out.movedim(axis, 0)
    return moved.reshape(moved.shape[0], -1)


@contextmanager
def hooks_fire():
    """Forward passes in which hooks on every submodule fire: in evaluation mode nn.TransformerEncoderLayer
    and nn.MultiheadAttention may run one fused kernel that calls none of their submodules (newer torch
    checks for hooks first; torch 2.4 does not, so the hooks on their Linears and norms stayed silent)."""
    enabled = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(enabled)


def capture_outputs(model: nn.Module, modules: list[nn.Module], x: torch.Tensor) -> list[torch.Tensor]:
    """The outputs of `modules` during one evaluation-mode forward pass of `model` on x."""
    return capture(model, modules, [], x)[0]


def capture(model: nn.Module, modules: list[nn.Module], attention: list[nn.Module], x: torch.Tensor, units: list[int] = ()):
    """(outputs of `modules`, q/k/v projections of the `attention` blocks as (channels, observations))
    during one evaluation-mode forward pass of `model` on x. An attention block is an
    nn.MultiheadAttention, or a packed projection (q, k and v of one Linear, a GLU's halves)
    whose output stacks copies of a group of `units` units."""
    captured: dict[int, torch.Tensor] = {}
    projected: dict[int, torch.Tensor] = {}
    hooks = [m.register_forward_hook(lambda mod, inp, out, i=i: captured.__setitem__(i, first_output(out).detach()))
             for i, m in enumerate(modules)]
    for i, m in enumerate(attention):
        if isinstance(m, nn.MultiheadAttention):
            hooks.append(m.register_forward_pre_hook(lambda mod, args, kwargs, i=i: projected.__setitem__(i, head_projections(mod, args, kwargs)),
                                                     with_kwargs=True))
        else:  # a packed projection: (k * units, N) -> (units, k * N), its k copies of a unit are observations of it
            hooks.append(m.register_forward_hook(lambda mod, inp, out, i=i: projected.__setitem__(
                i, torch.cat(units_first(first_output(out).detach(), channel_axis(mod)).split(units[i]), 1))))
    try:
        with torch.no_grad(), hooks_fire():
            model.eval()(x)
    finally:
        for h in hooks:
            h.remove()
    return [captured[i] for i in range(len(modules))], [projected[i] for i in range(len(attention))]


def head_projections(m: nn.MultiheadAttention, args, kwargs) -> torch.Tensor:
    """(embed_dim, observations): every attention channel's query, key and value projections of the
    block's inputs, each token an observation (what the heads group's units compute)."""
    inputs = [args[i] if len(args) > i else kwargs[name] for i, name in enumerate(("query", "key", "value"))]
    weights = m.in_proj_weight.chunk(3) if m._qkv_same_embed_dim else (m.q_proj_weight, m.k_proj_weight, m.v_proj_weight)
    biases = m.in_proj_bias.chunk(3) if m.in_proj_bias is not None else (None,) * 3
    with torch.no_grad():
        return torch.cat([units_first(F.linear(t, w, b), -1) for t, w, b in zip(inputs, weights, biases)], 1)


def writer_outputs(model: nn.Module, spec: AlignmentSpec, x: torch.Tensor, sizes: dict[str, int] | None = None) -> dict[str, torch.Tensor]:
    """{writer: (n_units, observations)}: every unit writer's output (before any norm) on inputs x,
    and {group: ...} for groups observed by a module of their own (spec.observer: heads, packed
    copies). sizes: the model's group sizes, if known."""
    names = list(dict.fromkeys(u.writer for g in spec.groups for u in spec.units.get(g, ())))
    modules = [model.get_submodule(w) for w in names]
    heads = [g for g in spec.groups if spec.observer(g)]
    if heads and sizes is None:
        sizes = spec.group_sizes(model.state_dict())
    outs, projected = capture(model, modules, [model.get_submodule(spec.observer(g)) for g in heads], x, [sizes[g] for g in heads])
    return {w: units_first(out, channel_axis(m)) for w, m, out in zip(names, modules, outs)} | dict(zip(heads, projected))


def group_outputs(spec: AlignmentSpec, outs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """writer_outputs by group: several writers of one group (a residual stream) stacked as more observations."""
    return {g: torch.cat([u.rows(outs[u.writer]) for u in spec.units[g]], 1) if spec.units.get(g) else outs[g]
            for g in spec.groups if spec.units.get(g) or spec.observer(g)}


def repair_points(model: nn.Module, spec: AlignmentSpec) -> list[tuple[nn.Module, nn.Module | None, slice]]:
    """(writer, the norm after it or None, the channels of its outputs that are the group's) for
    every unit writer of every group."""
    return [(model.get_submodule(u.writer), model.get_submodule(u.norm) if u.norm else None, u.span)
            for g in spec.groups for u in spec.units.get(g, ())]


def unobserved(spec: AlignmentSpec) -> list[str]:
    """Groups no module's output shows (a mixture of experts' stacked weights): activations cannot align them."""
    return [g for g in spec.groups if not spec.units.get(g) and not spec.observer(g)]


def bare(unit, state: dict) -> bool:
    """Whether REPAIR has no place to correct `unit` in: the norm after it has no bias in `state`, or
    without a norm, its writer has none (an attention block's is its out_proj's)."""
    if unit.norm:
        return f"{unit.norm}.bias" not in state
    return f"{unit.writer}.bias" not in state and f"{unit.writer}.out_proj.bias" not in state


def bare_writers(spec: AlignmentSpec, state: dict) -> list[str]:
    """Writers of the units REPAIR has no place to correct in (`bare`)."""
    return [u.writer for g in spec.groups for u in spec.units.get(g, ()) if bare(u, state)]


def unit_count(spec: AlignmentSpec) -> int:
    return sum(len(spec.units.get(g, ())) for g in spec.groups)


def repairable(spec: AlignmentSpec, state: dict) -> bool:
    """Whether REPAIR has a layer to correct in (a bias, or a norm with one, after some writer)."""
    return len(bare_writers(spec, state)) < unit_count(spec)


def stream_unit_features(models: list[nn.Module], spec: AlignmentSpec, batches, writers: Collection[str] = ()):
    """Per model {group: (n, d)} z-scored float32 activation features over input batches (features.py),
    every model seeing the same inputs; a group without a writer to observe gets one constant feature.
    With `writers` named, the same pass also features each of them on its own outputs (what the norm
    after it sees) and returns (per model {group: ...}, per model {writer: ...})."""
    streams: dict[tuple[str, str], CorrelationFeatures] = {}

    def add(key, blocks):
        if key not in streams:
            streams[key] = CorrelationFeatures([b.shape[0] for b in blocks])
        streams[key].add(blocks)

    sizes = [spec.group_sizes(m.state_dict()) for m in models]
    for x in batches:
        outs = [writer_outputs(m, spec, x, s) for m, s in zip(models, sizes)]
        per_model = [group_outputs(spec, o) for o in outs]
        for group in per_model[0]:
            add(("group", group), [a[group] for a in per_model])
        for writer in writers:
            add(("writer", writer), [o[writer] for o in outs])
    if not streams and any(spec.units.get(g) for g in spec.groups):
        raise ValueError("no input batches to probe activations with")
    # each group's observations freed as its features are made: not every group's of both at once;
    # made in float64, kept in float32, as the costs read them (half the memory: 0.9 GiB for two ViT-B/16)
    feats = {key: [f.to("cpu", torch.float32) for f in streams.pop(key).features()] for key in list(streams)}
    groups = [{g: feats[("group", g)][i] if ("group", g) in feats else torch.ones(sizes[i][g], 1) for g in spec.groups}
              for i in range(len(models))]
    if not writers:
        return groups
    return groups, [{w: feats[("writer", w)][i] for w in writers} for i in range(len(models))]
