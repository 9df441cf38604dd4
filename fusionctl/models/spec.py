"""Alignment specs: which axis of which parameter is indexed by which group of hidden units.

A group is a set of interchangeable nodes (one layer's units, one conv's channels, one
residual stream, one recurrent hidden state). Every method reads the same spec, so adding an
architecture means writing its spec once (git-re-basin's PermutationSpec idea).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from fusionctl.ot.barycenter import permutation_of


@dataclass(frozen=True)
class Axis:
    """An axis indexed by `group`, laid out as (outer, n, inner).

    outer > 1: gate blocks that share one coupling (LSTM's 4 gates are rows (4, n, in)).
    inner > 1: several entries per node (a linear layer reading a flattened (C, H, W) map).
    mid > 1: the n nodes form `heads` blocks, and the axis holds mid copies of each block's layout
    side by side, (outer, heads, mid, n / heads, inner), every copy moved as the block is
    (grouped-query attention: the query heads that read one key/value head).
    """

    group: str
    outer: int = 1
    inner: int = 1
    mid: int = 1
    heads: int = 1

    def nodes(self, length: int) -> int:
        """The group's number of nodes, for an axis of this length."""
        return length // (self.outer * self.inner * self.mid)


@dataclass(frozen=True)
class Unit:
    """Where a group's units can be observed: a module writing them (a Linear, a conv, one branch
    of a residual sum) and the normalisation applied right after it, if any. REPAIR corrects
    there, BatchNorm reset and activation probes read there. `channels`: only some of the writer's
    outputs (a writer whose units a split cuts into groups: DPN, ReXNet, FasterNet)."""

    writer: str
    norm: str | None = None
    channels: tuple[int, int] | None = None  # (first, stop): the group's units are these of the writer's outputs only

    @property
    def span(self) -> slice:
        """The writer's outputs that are this unit's (all of them without `channels`)."""
        return slice(*self.channels) if self.channels else slice(None)

    def rows(self, t: torch.Tensor) -> torch.Tensor:
        """This unit's rows of (writer's units, ...) `t`."""
        return t[self.span]


@dataclass(frozen=True)
class AlignmentSpec:
    """groups: hidden-unit groups in fusion order; axes: state key -> per-axis Axis or None;
    units: group -> where its units are written; coverage: for traced specs, what is permutable
    and what was frozen (models/trace.py); heads: group -> (module or None, number of heads) for
    a group of attention channels, which moves in whole heads (and within each head), or of a
    packed projection (1 head: q, k and v of one Linear, a GLU's halves). It is observed through
    the module: an nn.MultiheadAttention's q/k/v projections, or the packed projection's output;
    with None, through its own units (q, k and v Linears). local: state key -> (dim, group) for
    a grouped conv's weight, whose input axis `dim` indexes the channels of one block of `group`
    (the block of the row's own output channel; rows are indexed by `group` too): it is moved by
    the group's within-block permutations (blocks_gather), and costs read it through them.
    concat: name -> parts, for an axis that concatenates groups (a DenseNet's or an Inception
    block's joined channels): each part is a group, an Axis (a group laid out as copies: the
    query rows of a packed grouped-query projection), or the number of channels no group carries.
    Its name is not a group: it moves as its parts do (models/concat.py). per_head: state key ->
    (dim, group) for an axis (dim: a tuple, for several) with one entry, or one block of entries,
    per head of `group` (Swin's relative-position bias table; the columns reading LeViT's values,
    whose channels no group carries; a talking-heads mixer's weight): it moves with whole heads
    (fusion/transport.py). whole_heads: groups of heads whose
    channels keep their place within each head (rotary position embeddings rotate fixed pairs of
    a head's channels by fixed angles): they move only as whole heads."""

    groups: tuple[str, ...]
    axes: dict[str, tuple[Axis | None, ...]] = field(default_factory=dict)
    units: dict[str, tuple[Unit, ...]] = field(default_factory=dict)
    coverage: object | None = None
    heads: dict[str, tuple[str | None, int]] = field(default_factory=dict)
    local: dict[str, tuple[int, str]] = field(default_factory=dict)
    concat: dict[str, tuple[str | int | Axis, ...]] = field(default_factory=dict)
    per_head: dict[str, tuple[int | tuple[int, ...], str]] = field(default_factory=dict)
    whole_heads: frozenset[str] = frozenset()

    def group_sizes(self, state: dict[str, torch.Tensor]) -> dict[str, int]:
        sizes: dict[str, int] = {}
        for key, axes in self.axes.items():
            for dim, ax in enumerate(axes):
                if ax is not None and ax.group not in self.concat:
                    n = ax.nodes(state[key].shape[dim])
                    if sizes.setdefault(ax.group, n) != n:
                        raise ValueError(f"{key} axis {dim}: group {ax.group} has size {n}, elsewhere {sizes[ax.group]}")
        for g in self.groups:  # a cut writer's part that only concatenations read: as many units as channels it observes
            spans = [u.channels for u in self.units.get(g, ()) if u.channels]
            if g not in sizes and spans:
                sizes[g] = spans[0][1] - spans[0][0]
        return sizes

    def blocks(self, group: str) -> int:
        """How many blocks of consecutive units `group` moves in (1: any permutation)."""
        return self.heads[group][1] if group in self.heads else 1

    def head_dims(self, key: str) -> tuple[int, ...]:
        """The axes of `key` with one entry (or block) per head (spec.per_head: an int, or several)."""
        dims = self.per_head[key][0]
        return dims if isinstance(dims, tuple) else (dims,)

    def within(self, group: str) -> bool:
        """Whether `group`'s units may move within its blocks (not so for whole_heads)."""
        return group not in self.whole_heads

    def structure(self, key: str) -> bool:
        """Whether `key` is indexed by one group on two axes (recurrent hidden-to-hidden weights):
        a relation between the group's units, not a feature of each (gwb's Gromov-Wasserstein term)."""
        groups = [a.group for a in self.axes.get(key, ()) if a is not None]
        return len(groups) != len(set(groups))

    def observer(self, group: str) -> str | None:
        """The module observing a group of heads or packed copies (None: its units, if any)."""
        return self.heads[group][0] if group in self.heads else None

    def layout(self) -> tuple:
        """Everything the spec says about a network but its coverage report: two specs with equal
        layouts align the same entries in the same groups, moved the same way, whatever the widths."""
        return (self.groups, self.axes, self.units, self.heads, self.local, self.concat, self.per_head, self.whole_heads)

    def check_widths_only(self, state: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> None:
        """ValueError unless `target` has `state`'s entries and differs from it only in the aligned
        widths (inputs, classes and kernels stay): a fusion target of other widths."""
        for key, axes in self.axes.items():
            fixed = [d for d, ax in enumerate(axes) if ax is None]
            if key not in target:
                raise ValueError(f"it has no entry {key}, which the models have")
            if target[key].dim() != state[key].dim() or any(target[key].shape[d] != state[key].shape[d] for d in fixed):
                raise ValueError(f"its {key} has shape {tuple(target[key].shape)}, the models' {tuple(state[key].shape)}: "
                                 f"only the aligned widths may differ (axes {fixed} may not)")

    def check_covers(self, state: dict[str, torch.Tensor]) -> None:
        missing = sorted(set(state) - set(self.axes))
        extra = sorted(set(self.axes) - set(state))
        if missing or extra:
            raise ValueError(f"alignment spec does not match the state dict: missing {_some(missing)}, unknown {_some(extra)}")
        for key, axes in self.axes.items():
            if len(axes) != state[key].dim():
                raise ValueError(f"alignment spec gives {len(axes)} axes for {key} of shape {tuple(state[key].shape)}")

    def check_fits(self, model: torch.nn.Module, state: dict[str, torch.Tensor] | None = None) -> None:
        """ValueError unless this spec (written by hand, or traced and given back) names every entry of the
        model's state with its number of axes, gives each group one size, lists exactly the groups its
        axes name, and names writers, norms and attention blocks the model has (heads split groups evenly)."""
        state = model.state_dict() if state is None else state
        self.check_covers(state)
        named = self.group_sizes(state)
        if set(named) != set(self.groups):
            raise ValueError(f"spec.groups {list(self.groups)} differ from the groups its axes name {sorted(named)}")
        observers = (torch.nn.MultiheadAttention, torch.nn.Linear, torch.nn.modules.conv._ConvNd)
        for group, (name, count) in self.heads.items():
            if group not in named or named[group] % count:
                raise ValueError(f"heads of {group}: {named.get(group, 0)} units do not split into {count} heads")
            # a traced spec's observer is what the tracer saw write the heads (GPT-2's Conv1D too)
            if name is not None and not isinstance(_module(model, name), observers) and self.coverage is None:
                raise ValueError(f"heads of {group}: {name} is neither an nn.MultiheadAttention nor a packed Linear or convolution")
        for key, (dim, group) in self.local.items():
            rows = self.axes.get(key, (None,))[0]
            if rows is None or rows.group != group or group not in self.heads or state[key].shape[dim] * self.blocks(group) != named[group]:
                raise ValueError(f"local axis {dim} of {key}: needs rows indexed by {group}, "
                                 f"and {group}'s heads splitting it into blocks of that size")
        for key, (_, group) in self.per_head.items():
            for dim in self.head_dims(key):
                if group not in self.heads or key not in state or state[key].dim() <= dim or \
                        state[key].shape[dim] % self.blocks(group) or self.axes[key][dim] is not None:
                    raise ValueError(f"per-head axis {dim} of {key}: needs one entry (or block) per head of {group} and no group of its own")
        for key, axes in self.axes.items():
            for dim, ax in enumerate(axes):
                if ax is not None and ax.mid > 1 and (ax.group in self.concat or self.blocks(ax.group) != ax.heads):
                    raise ValueError(f"{key} axis {dim}: mid={ax.mid} copies need heads={ax.heads} to be the heads of {ax.group} in spec.heads")
        for group in self.whole_heads:
            if self.blocks(group) < 2:
                raise ValueError(f"whole heads of {group}: {group} is not a group of several heads in spec.heads")
        for name, parts in self.concat.items():
            groups = [p.group if isinstance(p, Axis) else p for p in parts if not isinstance(p, int)]
            if name in self.groups or any(g not in named for g in groups):
                raise ValueError(f"concatenation {name}: its parts must be groups of the spec, and it is not one itself")
            if any(isinstance(p, Axis) and p.mid > 1 and self.blocks(p.group) != p.heads for p in parts):
                raise ValueError(f"concatenation {name}: a part with mid copies needs its heads to be the heads of its group in spec.heads")
            size = sum(part_size(p, named) for p in parts)
            for key, axes in self.axes.items():
                for dim, ax in enumerate(axes):
                    if ax is not None and ax.group == name and state[key].shape[dim] != ax.outer * size * ax.inner * ax.mid:
                        raise ValueError(f"{key} axis {dim}: concatenation {name} has {size} channels, not {ax.nodes(state[key].shape[dim])}")
        for name in filter(None, (name for units in self.units.values() for u in units for name in (u.writer, u.norm))):
            _module(model, name)


def part_size(part: str | int | Axis, sizes: dict[str, int]) -> int:
    """Channels of one part of a concatenation: a group's units, copies of them, or a fixed count."""
    if isinstance(part, Axis):
        return part.outer * sizes[part.group] * part.mid * part.inner
    return sizes[part] if isinstance(part, str) else part


def _module(model: torch.nn.Module, name: str) -> torch.nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError as exc:
        raise ValueError(f"unit {name}: {exc}") from exc


def _some(keys: list[str], shown: int = 4) -> str:
    return str(keys) if len(keys) <= shown else f"{keys[:shown]} and {len(keys) - shown} more"


def apply_along(t: torch.Tensor, dim: int, ax: Axis, matrix: torch.Tensor | None, index: torch.Tensor | None = None,
                dense: bool = False) -> torch.Tensor:
    """Multiply the node index of axis `dim` of `t` by `matrix` (new_n, n): out[.., a, ..] = sum_b M[a, b] t[.., b, ..].

    A permutation matrix (exact couplings between equal widths) is applied as an index, not a
    dense product: exact, and O(n) instead of O(n^2) per slice. `index` (the source per row of
    a known permutation) skips both the check and the matrix; dense=True (known not to be one)
    skips the check.
    """
    if ax.mid > 1:
        matrix, index, ax = spread(ax, matrix, index, dense)
    shape = t.shape
    n = ax.nodes(shape[dim])
    perm = index if index is not None or dense else permutation_of(matrix)
    if perm is not None:
        return permute_nodes(t, shape[:dim].numel() * ax.outer, n, ax.inner * shape[dim + 1 :].numel(), perm.to(t.device)).reshape(shape)
    view = t.reshape(*shape[:dim], ax.outer, n, ax.inner, *shape[dim + 1 :])
    moved = torch.movedim(view, dim + 1, -1)
    out = torch.movedim(moved @ matrix.T.to(moved.dtype), -1, dim + 1)
    return out.reshape(*shape[:dim], ax.outer * matrix.shape[0] * ax.inner, *shape[dim + 1 :])


def spread(ax: Axis, matrix: torch.Tensor | None, index: torch.Tensor | None, dense: bool = False) -> tuple:
    """(matrix, index, axis) of an Axis with mid copies as a plain axis over all of its entries:
    each copy of a head's block is moved as the block is (an index per entry, or the matrix with
    one block per copy: M[(b, c), (b', c')] at ((b, r, c), (b', r, c')))."""
    h, mid = ax.heads, ax.mid
    plain = Axis(ax.group, ax.outer, ax.inner)
    if index is None and not dense:
        index = permutation_of(matrix)
    if index is not None:
        d = index.numel() // h
        src = index.view(h, 1, d)
        return None, ((src // d) * (mid * d) + torch.arange(mid, device=index.device).view(1, mid, 1) * d + src % d).reshape(-1), plain
    m, n = matrix.shape
    blocks = matrix.reshape(h, m // h, h, n // h)
    eye = torch.eye(mid, dtype=matrix.dtype, device=matrix.device)
    return torch.einsum("acbd,rs->arcbsd", blocks, eye).reshape(m * mid, n * mid), None, plain


def permute_nodes(t: torch.Tensor, lead: int, n: int, tail: int, perm: torch.Tensor) -> torch.Tensor:
    """t viewed as (lead, n, tail) with its n axis reordered by perm. Shaped so the copy stays
    contiguous: whole rows when nothing leads, a gather when nothing trails (index_select on a
    middle axis of stride 1 is several times slower, most of a sweep's time at width 2048)."""
    if lead == 1:
        return t.reshape(n, tail).index_select(0, perm)
    if tail == 1:
        return torch.gather(t.reshape(lead, n), 1, perm.expand(lead, n))
    return t.reshape(lead, n, tail).index_select(1, perm)


def blocks_gather(t: torch.Tensor, dim: int, blocks: int, index: torch.Tensor) -> torch.Tensor:
    """A grouped conv's weight `t` (rows already in the new order) with its block-local input axis
    `dim` moved by the within-block permutations of `index` (source unit per target unit of a
    group of `blocks` blocks): row r of block b reads local input j from local input index[b*d + j] mod d."""
    n = index.numel()
    d = n // blocks
    source_blocks = (index.view(blocks, d) // d).to(t.device)
    if t.shape[0] != n or t.shape[dim] != d or not torch.equal(source_blocks, source_blocks[:, :1].expand(blocks, d)):
        raise ValueError(f"a grouped weight of shape {tuple(t.shape)} moves only by whole blocks of {d} of its {n} channels")
    local = (index.view(blocks, d) % d).to(t.device).repeat_interleave(t.shape[0] // blocks, 0)  # (rows, d)
    shape = [t.shape[0]] + [1] * (t.dim() - 1)
    shape[dim] = d
    return torch.gather(t, dim, local.view(shape).expand(t.shape))


def node_slices(t: torch.Tensor, dim: int, ax: Axis) -> torch.Tensor:
    """(n, everything else) view of `t` with axis `dim`'s nodes first (gate blocks kept apart)."""
    shape = t.shape
    n = ax.nodes(shape[dim])
    if ax.mid > 1:  # (outer, heads, mid, d, inner): the nodes are (heads, d)
        view = t.reshape(*shape[:dim], ax.outer, ax.heads, ax.mid, n // ax.heads, ax.inner, *shape[dim + 1 :])
        return torch.movedim(view, (dim + 1, dim + 3), (0, 1)).reshape(n, -1)
    view = t.reshape(*shape[:dim], ax.outer, n, ax.inner, *shape[dim + 1 :])
    return torch.movedim(view, dim + 1, 0).reshape(n, -1)


def node_rows(t: torch.Tensor, ax: Axis) -> torch.Tensor:
    """Rows of `t` (axis 0 indexed by `ax`) as one feature vector per node: (n, everything else)."""
    return node_slices(t, 0, ax)
