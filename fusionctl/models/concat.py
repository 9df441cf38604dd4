"""Concatenated axes, split into their parts so that every method sees plain groups.

An entry read along a concatenation of groups (spec.concat: a DenseNet layer's BatchNorm over
all earlier features, a conv reading an Inception block's joined branches) acts as one piece
per part: a conv reading cat(a, b) computes conv_a(a) + conv_b(b). Splitting each such entry
into those pieces, each with its axis indexed by its part's group (or by none, for channels no
group carries), gives a spec without concatenations whose weight-matching objective, costs and
transports are the original's; joining the pieces back gives the state. Target widths may
differ: a joined axis is as long as its pieces.
"""

from __future__ import annotations

import torch

from fusionctl.models.spec import AlignmentSpec, Axis, part_size

State = dict[str, torch.Tensor]


def _first_concat(spec: AlignmentSpec, axes) -> int | None:
    return next((d for d, ax in enumerate(axes) if ax is not None and ax.group in spec.concat), None)


def _piece_axes(axes, dim: int, part: str | int | Axis) -> tuple:
    ax = axes[dim]
    if isinstance(part, Axis):  # a group laid out as copies (grouped-query heads): its layout inside the joined one
        piece = Axis(part.group, ax.outer * part.outer, part.inner * ax.inner, part.mid, part.heads)
    else:
        piece = Axis(part, ax.outer, ax.inner) if isinstance(part, str) else None
    return axes[:dim] + (piece,) + axes[dim + 1 :]


def _piece_sizes(spec: AlignmentSpec, group: str, sizes: dict[str, int]) -> list[int]:
    return [part_size(p, sizes) for p in spec.concat[group]]


def split_spec(spec: AlignmentSpec) -> AlignmentSpec:
    """The spec of split states: every entry read along a concatenation becomes one entry per
    part ("key#dim:part"), indexed by that part's group."""
    axes: dict[str, tuple] = {}

    def add(key, ax_tuple):
        dim = _first_concat(spec, ax_tuple)
        if dim is None:
            axes[key] = ax_tuple
            return
        for p, part in enumerate(spec.concat[ax_tuple[dim].group]):
            add(f"{key}#{dim}:{p}", _piece_axes(ax_tuple, dim, part))

    for key, ax_tuple in spec.axes.items():
        if key in spec.local and _first_concat(spec, ax_tuple) is not None:
            raise ValueError(f"{key} is a grouped convolution read along a concatenation, which fusionctl cannot split")
        add(key, ax_tuple)
    return AlignmentSpec(spec.groups, axes, spec.units, spec.coverage, spec.heads, spec.local, per_head=spec.per_head, whole_heads=spec.whole_heads)


def split_state(spec: AlignmentSpec, state: State) -> State:
    """`state` as split_spec(spec) names it."""
    sizes = spec.group_sizes(state)
    out: State = {}

    def add(key, t, ax_tuple):
        dim = _first_concat(spec, ax_tuple) if ax_tuple else None
        if dim is None:
            out[key] = t
            return
        ax = ax_tuple[dim]
        view = t.reshape(*t.shape[:dim], ax.outer, -1, ax.inner, *t.shape[dim + 1 :])
        start = 0
        for p, (part, n) in enumerate(zip(spec.concat[ax.group], _piece_sizes(spec, ax.group, sizes))):
            piece = view.narrow(dim + 1, start, n).reshape(*t.shape[:dim], ax.outer * n * ax.inner, *t.shape[dim + 1 :])
            add(f"{key}#{dim}:{p}", piece, _piece_axes(ax_tuple, dim, part))
            start += n

    for key, t in state.items():
        add(key, t, spec.axes.get(key, ()))
    return out


def join_state(spec: AlignmentSpec, pieces: State) -> State:
    """The inverse of split_state: each original entry with its pieces concatenated back, in order."""

    def get(key, ax_tuple):
        dim = _first_concat(spec, ax_tuple) if ax_tuple else None
        if dim is None:
            return pieces[key]
        ax = ax_tuple[dim]
        parts = [get(f"{key}#{dim}:{p}", _piece_axes(ax_tuple, dim, part)) for p, part in enumerate(spec.concat[ax.group])]
        shape = parts[0].shape
        views = [t.reshape(*shape[:dim], ax.outer, -1, ax.inner, *shape[dim + 1 :]) for t in parts]
        joined = torch.cat(views, dim + 1)
        return joined.reshape(*shape[:dim], -1, *shape[dim + 1 :])

    keys = dict.fromkeys(key.split("#", 1)[0] for key in pieces)
    return {key: get(key, spec.axes.get(key, ())) for key in keys}
