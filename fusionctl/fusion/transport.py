"""Weight surgery driven by an alignment spec: transport, averaging, interpolation."""

from __future__ import annotations

import weakref
from typing import Callable

import torch

from fusionctl.models.concat import join_state, split_spec, split_state
from fusionctl.models.spec import AlignmentSpec, Axis, apply_along, blocks_gather
from fusionctl.ot.barycenter import permutation_of
from fusionctl.ot.permutation import Merge, Permutation, dense

# id(coupling) -> (the coupling, weakly; {what: value} derived from it once: its permutation index,
# its row and column maps). Not attributes of the coupling: torch.save would write them with it.
_DERIVED: dict[int, tuple[weakref.ref, dict]] = {}


def derived(coupling: torch.Tensor, what, make: Callable[[], object]):
    """make(), computed once per coupling and kept while the coupling lives: a coupling is applied
    to many entries, many times."""
    ref, values = _DERIVED.get(id(coupling), (None, None))
    if ref is None or ref() is not coupling:
        ref, values = _DERIVED[id(coupling)] = (weakref.ref(coupling), {})
        weakref.finalize(coupling, _DERIVED.pop, id(coupling), None)  # they go with their coupling
    if what not in values:
        values[what] = make()
    return values[what]


def row_map(coupling: torch.Tensor) -> torch.Tensor:
    """Outgoing side: a target node is the mass-weighted average of the source nodes it is coupled to."""
    return coupling / coupling.sum(1, keepdim=True)


def col_map(coupling: torch.Tensor) -> torch.Tensor:
    # Incoming side: a source node's outgoing weight is split across the target nodes that
    # copy it, so a wider or narrower target keeps the function's scale (METHOD.md E.2-2).
    return coupling / coupling.sum(0, keepdim=True)


def permutation_index(coupling) -> torch.Tensor | None:
    """Source node per target node if `coupling` is a permutation / n, else None.

    A dense one (given by hand, or a soft solver's that happens to be one) is checked once (`derived`)."""
    if isinstance(coupling, Permutation):
        return coupling.index
    if isinstance(coupling, Merge):
        return None
    return derived(coupling, "permutation", lambda: permutation_of(row_map(coupling)))


def maps_statistics(coupling) -> bool:
    """Whether a base's measured unit statistics map through `coupling` (a permutation, or a merge:
    ot.permutation.Merge), so REPAIR need not move the base and measure it again."""
    return isinstance(coupling, Merge) or permutation_index(coupling) is not None


def along(t: torch.Tensor, dim: int, ax: Axis, coupling, rows: bool) -> torch.Tensor:
    """Axis `dim` of `t` mapped into the barycenter's node order by `coupling`: its row map (rows)
    or column map; a permutation's index either way (both maps are the same permutation). An
    identity returns `t` itself (model 0 as the anchor): callers treat entries as read-only."""
    if isinstance(coupling, Permutation) and coupling.identity:
        return t
    if isinstance(coupling, Merge):  # a merged unit writes its members' mean and is read wherever they were
        return apply_along(t, dim, ax, coupling.dense(t.dtype) if rows else coupling.indicator(t.dtype), dense=True)
    index = permutation_index(coupling)
    if index is not None:
        return apply_along(t, dim, ax, None, index)
    return apply_along(t, dim, ax, node_map(coupling, rows, t.dtype), dense=True)


def node_map(coupling: torch.Tensor, rows: bool, dtype: torch.dtype) -> torch.Tensor:
    """row_map (rows) or col_map of a soft coupling in `dtype`, made once per coupling (`derived`):
    normalising and casting it for every entry it moved took an eighth of a Sinkhorn fusion at width 2048."""
    return derived(coupling, ("map", rows, dtype), lambda: (row_map(coupling) if rows else col_map(coupling)).to(dtype))


def transport_tensor(t: torch.Tensor, axes, couplings: dict, skip: int | None = None) -> torch.Tensor:
    """One entry mapped into the barycenter's node order along every grouped axis but `skip`."""
    for dim, ax in enumerate(axes):
        if ax is not None and dim != skip and ax.group in couplings:
            t = along(t, dim, ax, couplings[ax.group], dim == 0)
    return t


def transport(state: dict[str, torch.Tensor], spec: AlignmentSpec, couplings: dict[str, torch.Tensor],
              done: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Map a model into the barycenter's node order: T(theta) of METHOD.md A.6.

    couplings[g] is (target size, source size); a group without a coupling is left as is.
    With exact couplings between equal widths each map is a permutation, so the function is
    preserved exactly. Entries read along a concatenation move piece by piece (models/concat.py).
    done: entries already moved by these couplings, taken as they are.
    """
    if spec.concat:
        return join_state(spec, transport(split_state(spec, state), split_spec(spec), couplings, done))
    out = {}
    for key, value in state.items():
        t = value
        if done is not None and key in done:
            t = done[key]
        elif t.is_floating_point():
            t = transport_tensor(t, spec.axes.get(key, ()), couplings)
            if key in spec.local:
                t = grouped_inputs(t, spec, key, couplings)
            for dim in spec.head_dims(key) if key in spec.per_head else ():
                t = per_head_entries(t, spec, key, dim, couplings)
            t = t.to(value.dtype)
        out[key] = t
    return out


def grouped_inputs(t: torch.Tensor, spec: AlignmentSpec, key: str, couplings: dict[str, torch.Tensor]) -> torch.Tensor:
    """A grouped conv's block-local input axis moved by its group's within-block permutations
    (spec.local); unchanged while that group has no coupling, as its rows are."""
    dim, group = spec.local[key]
    if group not in couplings:
        return t
    index = permutation_index(couplings[group])
    if index is None:
        raise ValueError(f"{key} is a grouped convolution: its group {group} must be coupled by a permutation (equal widths, exact OT)")
    return blocks_gather(t, dim, spec.blocks(group), index)


def per_head_entries(t: torch.Tensor, spec: AlignmentSpec, key: str, dim: int, couplings: dict[str, torch.Tensor]) -> torch.Tensor:
    """An entry with one value (or one block of values) per head of its group (spec.per_head) moved
    with whole heads: each target head takes the source head its block comes from; under a soft
    coupling, the mass-weighted average over source heads of the coupling's block sums."""
    group = spec.per_head[key][1]
    if group not in couplings:
        return t
    p, blocks = couplings[group], spec.blocks(group)
    m = t.shape[dim] // blocks  # entries per head
    index = permutation_index(p)
    if index is not None:
        d = index.numel() // blocks  # channels per head
        heads = (index[::d] // d).to(t.device)
        return t.index_select(dim, (heads[:, None] * m + torch.arange(m, device=t.device)).flatten())
    heads = p.reshape(blocks, p.shape[0] // blocks, blocks, p.shape[1] // blocks).sum((1, 3))
    return apply_along(t, dim, Axis(group, 1, m), row_map(heads), dense=True)


def rows_with_aligned_inputs(t: torch.Tensor, spec: AlignmentSpec, key: str, couplings: dict[str, torch.Tensor]) -> torch.Tensor:
    """A grouped conv's weight as a cost reads its rows: rows in the model's own order, the
    block-local input axis moved by each block's current within-block permutation (spec.local),
    as recurrent weights are read through their own group's current coupling. Unchanged while
    that group has no permutation coupling yet."""
    dim, group = spec.local[key]
    index = permutation_index(couplings[group]) if group in couplings else None
    if index is None:
        return t
    index = index.to(t.device)
    out = torch.empty_like(t)
    out[index] = blocks_gather(t.index_select(0, index), dim, spec.blocks(group), index)
    return out


def weighted_average(states: list[dict[str, torch.Tensor]], weights: list[float]) -> dict[str, torch.Tensor]:
    """sum_i lambda_i theta_i for float entries; integer buffers (BN counters) come from the first state.

    Accumulated in the entries' own precision (float32 for half types): a float64 sum took 30
    times as long, most of the averaging time of a fusion at width 2048, for K ulps of accuracy."""
    out = {}
    for key, first in states[0].items():
        if first.is_floating_point():
            acc = torch.float32 if first.element_size() < 4 else first.dtype
            total = torch.mul(first.to(acc), weights[0])
            for s, w in zip(states[1:], weights[1:]):
                total.add_(s[key].to(acc), alpha=w)
            out[key] = total.to(first.dtype)
        else:
            out[key] = first.clone()
    return out


def interpolate(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], t: float) -> dict[str, torch.Tensor]:
    """(1 - t) a + t b."""
    return weighted_average([a, b], [1.0 - t, t])


def identity_couplings(spec: AlignmentSpec, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {g: identity_coupling(n) for g, n in spec.group_sizes(state).items()}


def random_couplings(spec: AlignmentSpec, state: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, Permutation]:
    """A random permutation / n of every group, heads as whole heads (spec.heads): transporting a
    model by them gives another parametrisation of the same function (the tests' planted alignments)."""
    out = {}
    for group, n in spec.group_sizes(state).items():
        blocks = spec.blocks(group)
        if blocks == 1:
            perm = torch.randperm(n, generator=generator)
        else:
            d = n // blocks
            perm = torch.cat([b * d + (torch.randperm(d, generator=generator) if spec.within(group) else torch.arange(d))
                              for b in torch.randperm(blocks, generator=generator).tolist()])
        out[group] = Permutation(perm)
    return out


def identity_coupling(n: int, device="cpu") -> Permutation:
    return Permutation(torch.arange(n, device=device))


def relative_coupling(ref, other):
    """Coupling between a reference model's nodes and another model's, through the barycenter.

    ref (m, n_ref) and other (m, n_other) couple the same m barycenter nodes; the result
    ref^T diag(1 / ref 1) other is (n_ref, n_other) with marginals 1/n_ref and 1/n_other.
    For permutations it is the permutation taking the other model into the reference's order.
    """
    if isinstance(ref, Permutation) and isinstance(other, Permutation):
        index = torch.empty_like(ref.index)
        index[ref.index] = other.index.to(ref.device)  # reference node ref[j] meets other's node other[j]
        return Permutation(index)
    ref, other = dense(ref), dense(other)
    return ref.T @ (other / ref.sum(1, keepdim=True))
