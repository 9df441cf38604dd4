"""What an alignment spec aligns, entry by entry: the alignment.md that `fusionctl fuse` writes
beside its results, and fusionctl.alignment_report(spec, model) from Python."""

from __future__ import annotations

import torch

from fusionctl.models.spec import AlignmentSpec, Axis, part_size


def _layout(ax: Axis) -> str:
    return "".join(f" {name}={n}" for name, n in (("outer", ax.outer), ("inner", ax.inner), ("copies per head", ax.mid)) if n > 1)


def _axis(key: str, dim: int, ax: Axis) -> str:
    return f"`{key}`[{dim}{_layout(ax)}]"


def _moves(spec: AlignmentSpec, group: str) -> str:
    count = spec.blocks(group)
    if count == 1:
        return "any permutation" if group not in spec.heads else "any permutation (its packed copies together)"
    kind = "grouped-conv blocks" if group in {g for _, g in spec.local.values()} else "heads"
    return f"{count} {kind}: whole, and within each" if spec.within(group) else f"{count} {kind}: whole only (rotary embeddings)"


def alignment_report(spec: AlignmentSpec, state: dict[str, torch.Tensor] | torch.nn.Module) -> str:
    """Markdown: every group (units, how it moves, where its units are observed, every entry axis it
    indexes), every concatenation and its parts, what froze the rest of a traced model (every
    module, by reason), and the entries no group indexes."""
    state = state.state_dict() if isinstance(state, torch.nn.Module) else state
    sizes = spec.group_sizes(state)
    reads: dict[str, list[str]] = {}
    unaligned = []
    for key, axes in spec.axes.items():
        named = [(dim, ax) for dim, ax in enumerate(axes) if ax is not None]
        if not named and key not in spec.per_head and state[key].is_floating_point():
            unaligned.append(f"`{key}`")
        for dim, ax in named:
            reads.setdefault(ax.group, []).append(_axis(key, dim, ax))
    for key, (dim, group) in spec.local.items():
        reads[group].append(f"`{key}`[{dim} within each block]")
    for key, (_, group) in spec.per_head.items():
        for dim in spec.head_dims(key):
            per = state[key].shape[dim] // spec.blocks(group)
            reads[group].append(f"`{key}`[{dim} one per head]" if per == 1 else f"`{key}`[{dim} {per} per head]")
    lines = [f"# Alignment: {len(spec.groups)} group{'s' * (len(spec.groups) != 1)}, {sum(sizes.values()):,} hidden units", ""]
    if spec.coverage is not None:
        lines += [f"Traced: {spec.coverage}", ""]
    lines += ["| group | units | moves as | observed at | entry axes it indexes |", "|---|---|---|---|---|"]
    for group in spec.groups:
        observed = ", ".join(f"`{u.writer}`" + (f"[{u.channels[0]}:{u.channels[1]}]" if u.channels else "") + (f" → `{u.norm}`" if u.norm else "")
                             for u in spec.units.get(group, ()))
        observed = observed or (f"`{spec.observer(group)}`" if spec.observer(group) else "—")
        lines.append(f"| `{group}` | {sizes[group]} | {_moves(spec, group)} | {observed} | {', '.join(reads.get(group, []))} |")
    if spec.concat:
        lines += ["", "Concatenations (each moves as its parts do; a number is channels no group carries):", "",
                  "| concatenation | parts | entry axes that read it |", "|---|---|---|"]
        for name, parts in spec.concat.items():
            shown = " + ".join(f"`{p}` ({sizes[p]})" if isinstance(p, str) else f"{p} fixed" if isinstance(p, int) else
                               f"`{p.group}` ({part_size(p, sizes)}:{_layout(p)})" for p in parts)
            lines.append(f"| `{name}` | {shown} | {', '.join(reads.get(name, []))} |")
    frozen = getattr(spec.coverage, "frozen", None)
    if frozen:
        lines += ["", "Frozen (left in place, never permuted), by reason:", ""]
        lines += [f"- {reason}: {', '.join(f'`{m}`' for m in modules)}" for reason, modules in frozen.items()]
    if unaligned:
        lines += ["", f"Entries no group indexes ({len(unaligned)}; averaged as they are): {', '.join(unaligned)}"]
    return "\n".join(lines) + "\n"
