"""The experts of a mixture as a group of their own, proposed for the self-check to confirm.

The tracer cannot follow which expert a token takes (top-k, sorting and counts carry integer
indices), so a router's outputs and the experts' axis of the weights stacked per expert stay
frozen (docs/tracing.md). The experts are a symmetry all the same: permuting the router's rows and
every stacked entry's expert axis together keeps the function. `propose_experts` adds that group
where the pattern is plain: a module holding entries stacked along a first axis of E experts that
no group indexes (the experts), beside exactly one other module in the same block with an (E, d)
weight whose rows no group indexes (the router), with any vector of one entry per expert that the
block or the router holds (a routing bias). Nothing here proves the proposal;
fusion/spec_check.with_experts keeps it only if a random permutation of every group leaves the
model's outputs as they were.
"""

from __future__ import annotations

import dataclasses

from torch import nn

from fusionctl.models.spec import AlignmentSpec, Axis, Unit


def _owner(key: str) -> str:
    return key.rsplit(".", 1)[0] if "." in key else ""


def _within(name: str, block: str) -> bool:
    return not block or name == block or name.startswith(block + ".")


def propose_experts(spec: AlignmentSpec, model: nn.Module) -> AlignmentSpec | None:
    """`spec` with one more group per mixture of experts found (after the groups its router reads,
    before its experts' hidden units), observed at the router where it is a Linear (its logits);
    None where no mixture has the plain pattern."""
    state = model.state_dict()
    frozen_first = {k for k, axes in spec.axes.items() if axes and axes[0] is None and state[k].dim() >= 1}
    holders = {(_owner(k), state[k].shape[0]) for k in frozen_first
               if state[k].dim() >= 3 and any(a is not None for a in spec.axes[k][1:])}
    groups, axes, units, moved, counts = list(spec.groups), dict(spec.axes), dict(spec.units), [], []
    for holder, experts in sorted(holders):
        if experts < 2:
            continue
        for block in dict.fromkeys([holder, _owner(holder) if holder else holder]):
            routers = {_owner(k) for k in frozen_first if _within(k, block) and _owner(k) != holder and state[k].dim() == 2
                       and state[k].shape[0] == experts and spec.axes[k][1] is not None}
            if routers:
                break
        group = f"{block}.experts" if block else "experts"
        if len(routers) != 1 or group in groups:
            continue
        router = routers.pop()
        members = [k for k in frozen_first if _owner(k) in (holder, router) and state[k].shape[0] == experts]
        reads = {a.group for k in members for a in axes[k][1:] if a is not None}
        at = max((groups.index(g) for g in reads), default=len(groups))  # before the last group they read: the experts' hidden units
        groups.insert(at, group)
        axes.update({k: (Axis(group),) + axes[k][1:] for k in members})
        for k, t in state.items():  # a vector of one entry per expert that the block or its router holds (a routing bias)
            current = axes.get(k, (None,) * t.dim())
            dims = [d for d, n in enumerate(t.shape) if n == experts and current[d] is None]
            if (k not in members and t.is_floating_point() and t.numel() == experts and len(dims) == 1
                    and (_owner(k) == block or _within(_owner(k), router))):
                axes[k] = tuple(Axis(group) if d == dims[0] else a for d, a in enumerate(current))
        if isinstance(model.get_submodule(router), nn.Linear):
            units[group] = (Unit(router),)
        moved.append(router)
        counts.append(experts)
    if not moved:
        return None
    coverage = spec.coverage
    if coverage is not None:  # the experts are hidden units now, permutable; a router the tracer froze (a Linear) counted already
        counted = sum(n for r, n in zip(moved, counts) if any(r in mods for mods in coverage.frozen.values()))
        frozen = {reason: [m for m in mods if m not in moved] for reason, mods in coverage.frozen.items()}
        coverage = dataclasses.replace(coverage, experts=len(moved), permutable=coverage.permutable + sum(counts),
                                       hidden=coverage.hidden + sum(counts) - counted,
                                       frozen={r: mods for r, mods in frozen.items() if mods}, checked="")
    return dataclasses.replace(spec, groups=tuple(groups), axes=axes, units=units, coverage=coverage)
