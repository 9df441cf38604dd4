"""`solver=wm`: Git Re-Basin weight matching (Ainsworth et al. 2023).

Coordinate descent over groups (input to output first, then in random order): with every other permutation fixed, the best
permutation of one group solves a linear assignment on sum_p <W_a[.., j, ..], W_b'[.., k, ..]>
over every parameter axis that group indexes (scipy's LAP). Repeats until a full sweep changes
nothing. K > 2 models: matched to model 0, then MergeMany (each model in turn matched to the
mean of the others) until a round brings no model closer to the others' mean.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from fusionctl.config import WMSettings
from fusionctl.errors import FusionctlError
from fusionctl.fusion.engine import FusionResult, fuse_with_couplings
from fusionctl.fusion.transport import (
    identity_couplings,
    rows_with_aligned_inputs,
    transport,
    transport_tensor,
    weighted_average,
)
from fusionctl.models.spec import AlignmentSpec, node_slices
from fusionctl.ot.permutation import same
from fusionctl.ot.solver import assignment_coupling

log = logging.getLogger(__name__)


def agreement(spec: AlignmentSpec, target: dict, source: dict, couplings: dict, group: str | None = None) -> float:
    """Weight matching's objective, sum <target, T(source)> (float64), over the entries `group`
    indexes, or over every entry a group indexes."""
    keys = [k for k, axes in spec.axes.items() if any(a is not None and (group is None or a.group == group) for a in axes)]
    moved = transport({k: source[k] for k in keys}, spec, couplings)
    return sum(float((target[k].double() * moved[k].double()).sum()) for k in keys)


def group_similarity(spec: AlignmentSpec, target: dict, source: dict, couplings: dict, group: str, ready=None) -> torch.Tensor:
    """(target node, source node) float32 similarity of `group`: sum_p <target slice, source slice>
    over every entry axis in the group, the source's other axes mapped by `couplings` (this group's
    own too, for recurrent weights) and this axis left in its order. ready: only the entries whose
    rows are the group and whose other axes are all in `ready` (the first, input-to-output sweep)."""
    sim = None
    for key, axes in spec.axes.items():
        if ready is not None and not (axes and axes[0] is not None and axes[0].group == group
                                      and all(a is None or a.group in ready for a in axes[1:])):
            continue
        for dim, ax in enumerate(axes):
            if ax is not None and ax.group == group:
                # float32, as Git Re-Basin computes: twice float64's speed, the same assignments but for exact ties
                b = transport_tensor(source[key].to(torch.float32), axes, couplings, skip=dim)
                if key in spec.local and dim == 0:  # a grouped conv's local inputs, through this group's current blocks
                    b = rows_with_aligned_inputs(b, spec, key, couplings)
                term = node_slices(target[key].to(torch.float32), dim, ax) @ node_slices(b, dim, ax).T
                sim = term if sim is None else sim.add_(term)
    if sim is None:  # nothing ready yet (a first sweep): no preference
        n = spec.group_sizes(source)[group]
        return torch.zeros(n, n, dtype=torch.float32)
    return sim


def match(spec: AlignmentSpec, target: dict, source: dict, sweeps: int = 100, seed: int = 0, start: dict | None = None) -> dict:
    """Couplings (permutations) that bring `source` closest to `target` in weight space, searched
    from `start` (MergeMany's current couplings) or the identity."""
    sizes = spec.group_sizes(source)
    if sizes != spec.group_sizes(target):
        raise FusionctlError("solver=wm matches permutations and needs equal widths; use solver=wb for other widths")
    couplings = dict(start) if start is not None else identity_couplings(spec, source)
    rng = np.random.default_rng(seed)
    linearised = {g for _, g in spec.local.values()}  # their cost reads their own coupling (a grouped conv's local inputs)

    for sweep in range(sweeps):
        changed = False
        order = list(spec.groups) if sweep == 0 else rng.permutation(list(spec.groups))
        done: set[str] = set()
        for group in order:
            # the first sweep goes input to output, so each group sees its inputs already aligned
            # (using only incoming weights, whose inputs are then aligned); later sweeps use every
            # axis of the group in a random order, as Git Re-Basin does
            sim = group_similarity(spec, target, source, couplings, group, done if sweep == 0 else None)
            new = assignment_coupling(-sim, spec.blocks(group), spec.within(group))
            done.add(group)
            if same(new, couplings[group]):
                continue
            if sweep > 0 and group in linearised and (agreement(spec, target, source, {**couplings, group: new}, group)
                                                      < agreement(spec, target, source, couplings, group)):
                continue  # a linearised step that would lower the objective is not taken
            changed = True
            couplings[group] = new
        if not changed:
            break
    return couplings


def fuse_wm(spec, states, weights, target_sizes, settings: WMSettings, ctx) -> FusionResult:
    couplings = [identity_couplings(spec, s) for s in states]
    if len(states) == 2:
        couplings[1] = match(spec, states[0], states[1], settings.sweeps, settings.seed)
    elif len(states) > 2:
        # start from pairwise matches to model 0, then MergeMany: each model in turn matched to the
        # mean of the others, from its current permutations (as Git Re-Basin permutes the model in
        # place), kept where it brings the model closer to that mean; until a round brings none closer
        for i in range(1, len(states)):
            couplings[i] = match(spec, states[0], states[i], settings.sweeps, settings.seed)
        rng = np.random.default_rng(settings.seed)
        closer = True
        for _ in range(settings.sweeps):
            closer = False
            for i in rng.permutation(len(states)):
                others = [j for j in range(len(states)) if j != i]
                mean = weighted_average([transport(states[j], spec, couplings[j]) for j in others], [1.0 / len(others)] * len(others))
                new = match(spec, mean, states[i], settings.sweeps, settings.seed, start=couplings[i])
                if agreement(spec, mean, states[i], new) > agreement(spec, mean, states[i], couplings[i]):
                    closer = True
                    couplings[i] = new
            if not closer:
                break
        if closer:
            log.warning("wm: MergeMany stopped at solver.sweeps=%d rounds while still bringing models closer to the others' "
                        "mean; raise solver.sweeps to search longer or lower it to stop sooner", settings.sweeps)
    return fuse_with_couplings(spec, states, weights, couplings)
