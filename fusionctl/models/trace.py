"""Alignment specs traced from any torch module (torch.fx), frozen where unsure, with coverage.

A torch.fx Interpreter runs the model on example inputs and gives every axis of every tensor an
element of a union-find (PLeaS-Merging's design): Linear/Conv/ConvTranspose/Embedding outputs
open an element (a candidate group of hidden units, written by that module), and so do F.linear /
F.conv* / F.embedding called on a module's own weight inside a torch.nn subclass (timm's layers,
Gemma's embedding; F.batch_norm and F.group_norm there are read as the norms) and torch.addmm on
Hugging Face's Conv1D (GPT-2); element-wise binary ops (residual
adds, gates) unify their operands' elements; norms, activations, pooling, dropout, permutes and
reshapes of trailing axes carry them on; a C x H x W flatten into a Linear keeps the channel
element with inner = H*W (and copies made by repeat, tile, repeat_interleave or F.unfold keep
it, with outer or inner multiplied); a depthwise conv keeps its input's element, and so does a grouped conv
with as many outputs as inputs, whose element then moves in whole blocks and within each, its
weight's block-local input axis following (spec.local); pooling, resampling and
padding over space keep the channels; a matrix product unifies the axes it contracts;
nn.MultiheadAttention reads its inputs' channels and writes a group in out_proj, and its q/k/v
rows form a group of heads (spec.heads: moved only in whole heads and within each); a reshape
of a channel axis into (heads, d) and back marks the same in home-made attention (Ref.part),
and heads whose channels meet a fixed table or a weight shared by every head (rotary
embeddings, q/k norms) move only whole (spec.whole_heads);
nn.TransformerEncoder(Layer) is traced through its plain math (plain_forwards.py); an einsum
ties every axis of one letter; a channel axis split evenly makes its pieces packed copies of
one group (q, k, v of one Linear; a GLU's halves); a concatenation along a channel axis carries
an element made of its parts' (spec.concat: it moves as they do). Parameters are linked to the
elements of the axes they touch. Anything the tracer cannot vouch for — an unknown op or module,
a concatenation split into heads or added to another tensor (and then its parts), an uneven
split or a slice along a channel axis, a window or pad across one, the
indices of a max over one, a grouped conv with unequal inputs and outputs (or transposed), a GroupNorm mixing
channel blocks, a tied weight laid out otherwise in its uses (else its uses unify), a size mismatch, a reduction, softmax or parameter across heads —
freezes the elements it touches (every input of an unknown op, lists of tensors included), as do
the model's inputs and outputs; torch.stack unifies its inputs' axes. A frozen group is left
unpermuted, never permuted wrongly, and the coverage report names why.
"""

from __future__ import annotations

import torch
from torch import fx, nn

from fusionctl.errors import first_line
from fusionctl.models.axes import unify_all
from fusionctl.models.concrete_trace import RunError, concrete_trace, wrapped_calls
from fusionctl.models.elements import Coverage, Ref
from fusionctl.models.plain_forwards import symbolic_trace
from fusionctl.models.spec import AlignmentSpec, Axis, Unit
from fusionctl.models.tracer import AxisTracer


class TraceError(ValueError):
    """The model could not be traced at all (untraceable control flow, wrong example inputs)."""


def derive_spec(model: nn.Module, example_inputs) -> AlignmentSpec:
    """The alignment spec of `model`, traced with torch.fx on `example_inputs` (a tensor or a tuple).

    Returns an AlignmentSpec whose `coverage` says how many hidden units are permutable and what
    froze the rest. Raises TraceError when the model cannot be traced at all.
    """
    inputs = example_inputs if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    was_training = model.training
    model.eval()  # before fx records the graph: `if self.training` branches (drop path, dropout) are fixed then
    try:
        gm = traced_graph(model, inputs)
        tracer = AxisTracer(gm, model)
        try:
            with torch.no_grad():
                tracer.run(*inputs)
        except Exception as exc:
            raise wrong_inputs(model, exc) from exc
    finally:
        model.train(was_training)
    tie_weights(model, tracer)
    return build(model, tracer)


def traced_graph(model: nn.Module, inputs) -> fx.GraphModule:
    """Plain fx tracing; where it fails on control flow, or keeps a library's function whole
    (torch.fx.wrap), tracing specialised to the example inputs' shapes (concrete_trace.py)."""
    try:
        gm, error = symbolic_trace(model, len(inputs)), None
        if not wrapped_calls(gm):
            return gm
    except Exception as exc:  # fx raises many types for control flow on tensors
        gm, error = None, exc
    try:
        return concrete_trace(model, inputs)
    except Exception as exc:
        if gm is not None:  # the plain graph, library functions kept whole
            return gm
        failed = exc.__cause__ if isinstance(exc, RunError) else eager_failure(model, inputs)
        if failed is not None:  # an assert on the example's shapes, say: no tracer could succeed
            raise wrong_inputs(model, failed) from exc
        error = exc
    if getattr(getattr(model, "config", None), "_experts_implementation", None) == "eager":  # Hugging Face's loop over the experts hit
        raise TraceError(f"{type(model).__name__} cannot be traced by torch.fx ({first_line(error)}): its experts run as a loop over "
                         "the experts a batch uses (Hugging Face's eager form, the default where torch has no grouped matmul, "
                         'before 2.9); set model.config._experts_implementation = "batched_mm" (the same function) before fusing') from error
    raise TraceError(f"{type(model).__name__} cannot be traced by torch.fx ({first_line(error)}); "
                     "avoid Python control flow on tensor values in forward(), or write its spec by hand "
                     "(model.spec=mypkg.nets.my_spec, or fusionctl.fuse_models(spec=...))") from error


def wrong_inputs(model: nn.Module, failed: BaseException) -> TraceError:
    return TraceError(f"running {type(model).__name__} on the example inputs failed ({first_line(failed)}); "
                      "give example inputs of the shape the model expects")


def eager_failure(model: nn.Module, inputs) -> Exception | None:
    """What running the model itself on the inputs raises, if anything."""
    try:
        with torch.no_grad():
            model(*inputs)
    except Exception as exc:
        return exc
    return None


def tie_weights(model: nn.Module, tracer: AxisTracer) -> None:
    """A weight tied under several names (an LLM's embedding and output head, a layer reused) is one
    tensor, so each of its axes carries one permutation in every use: they are unified, as a
    residual sum's operands are (an axis no group carries in one use freezes it in the others). A
    name the trace never read (a bias tied to another module's) takes the links of one it did,
    since the state dict holds the tensor under every name."""
    owners: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        owners.setdefault(id(p), []).append(name)
    for names in owners.values():
        read = [tracer.links[name] for name in names if name in tracer.links]
        if len(names) < 2 or not read:
            continue
        for axis in zip(*read):
            if any(r is not None and not tracer.els.frozen(r.el) for r in axis):  # else nothing moves it (the vocabulary)
                unify_all(tracer.els, list(axis), f"tied weights {' = '.join(names)}")
        for name in names:
            tracer.links.setdefault(name, list(read[0]))


def pin_concatenations(els) -> None:
    """A concatenation moves only as its parts do. One split into heads or read as packed
    copies cannot move, a part laid out as packed copies or reached as a concatenation itself
    (by a sum) is pinned, and a frozen concatenation pins its parts (its readers see them in
    place); repeated until nothing changes, as one pin can freeze another concatenation's part."""
    packed = {els.find(r) for r in els.packed}
    for r in els.members:
        if r in els.heads or r in packed:
            els.freeze(r, "concatenation split into heads or copies")
    changed = True
    while changed:
        changed = False
        for c in els.concats:
            r = els.find(c)
            for p, _ in els.parts(c):
                if p is None or els.frozen(p):
                    continue
                if els.frozen(r) or p in packed or p in els.members:
                    reason = els.reasons[r][0].split(" at ")[0] if els.frozen(r) else "of packed copies or of a sum of concatenations"
                    els.freeze(p, reason if reason == "model output" else f"read through a concatenation that cannot move ({reason})")
                    changed = True


def copied_heads(els) -> dict[int, tuple[int, int, int]]:
    """Roots of query heads that copy their key/value heads' layout (grouped-query attention) ->
    (the keys' root, outer, mid). They move with those heads or not at all: a freeze of either
    freezes both. A parameter with one entry per query head (attention sinks, a logit bias) moves
    in blocks of a key's copies when each key's query heads are consecutive (mid); tiled, it freezes them."""
    expanded = {els.find(x): (els.find(k), outer, mid) for x, (k, outer, mid) in els.expands.items()}
    per_head = {els.find(h) for h in els.head_of.values()}
    for x, (k, outer, _) in expanded.items():
        if x in per_head and outer > 1:
            els.freeze(x, "a parameter with one entry per query head of grouped-query attention whose heads are tiled")
        for a, b in ((x, k), (k, x)):
            if els.frozen(a) and not els.frozen(b):
                els.freeze(b, els.reasons[a][0])
    return {x: (els.find(k), outer, mid) for x, (k, outer, mid) in expanded.items()}


def build(model: nn.Module, tracer: AxisTracer) -> AlignmentSpec:
    els = tracer.els
    pin_concatenations(els)
    for r, (part, *_) in list(els.packed.items()):
        if els.frozen(r):  # rows of a packed projection that cannot move: neither can its heads
            els.freeze(part, els.reasons[els.find(r)][0])
    packed = {els.find(r): p for r, p in els.packed.items()}
    gates = {r: els.find(h) for r, h in els.head_of.items() if els.writers[r]}  # a module's values per head: they move with the heads
    for r, h in gates.items():
        if els.frozen(r):
            els.freeze(h, els.reasons[els.find(r)][0])
    expanded = copied_heads(els)
    for r, h in gates.items():
        if els.frozen(h):
            els.freeze(r, els.reasons[els.find(h)][0])
    # a writer's units cut into parts (Elements.cut, its parts opened in turn): the parts are its groups
    cut = {els.find(c) for c in els.cuts}
    roots = [r for r in dict.fromkeys(els.find(e) for e in els.opened) if r not in packed and not (r in els.members and (r in cut or not els.frozen(r)))]
    live = [r for r in roots if not els.frozen(r) and r not in expanded and r not in gates]
    labels: dict[int, str] = {}
    for e, (w, a) in els.labels.items():  # the first cut names a group whose parts met others' since
        labels.setdefault(els.find(e), f"{w}[{a}:{a + els.size[e]}]")
    names: dict[int, str] = {}
    for r in live:
        base = els.writers[r][0] if els.writers[r] else labels.get(r, f"group{r}")
        names[r] = base if base not in names.values() else f"{base}#{r}"
    cats: dict[int, str] = {}  # live concatenation -> its name (not a group: it moves as its parts do)
    for r, held in els.members.items():
        if not els.frozen(r) and any(p in names for p, _ in els.parts(r)):
            name = f"cat:{els.concat_at[held[0]]}"
            cats[r] = name if name not in cats.values() else f"{name}#{r}"  # one op may cut several writers
    state = model.state_dict()
    axes: dict[str, tuple[Axis | None, ...]] = {}
    head_axes: dict[str, tuple[list[int], str]] = {}  # key -> its axes with one entry (or block) per head of a group
    for key, value in state.items():
        links = tracer.links.get(key, [None] * value.dim())
        row = []
        for dim, ref in enumerate(links):
            if ref is not None and els.find(ref.el) in packed:  # a packed q/k/v axis: k copies of its heads' element
                part, k, interleaved = packed[els.find(ref.el)]
                ref = Ref(part, ref.outer, ref.inner * k) if interleaved else Ref(part, ref.outer * k, ref.inner)
            root = els.find(ref.el) if ref is not None else None
            owner = els.find(els.head_of[root]) if root in els.head_of else None
            owner = expanded[owner][0] if owner in expanded else owner  # a query head's entry: with its key's copies
            if owner in names and not els.frozen(root):
                head_axes.setdefault(key, ([], names[owner]))[0].append(dim)  # moves with whole heads
            if root in expanded:  # query heads: copies of their key/value heads' layout
                base, outer, mid = expanded[root]
                name = names.get(base)
                ax = Axis(name, ref.outer * outer, ref.inner, mid, els.heads[base] if mid > 1 else 1)
                ok = name is not None and value.shape[dim] == ax.outer * els.size[base] * mid * ax.inner
            else:
                name = names.get(root, cats.get(root))
                ok = name is not None and value.shape[dim] == ref.outer * els.size[root] * ref.inner
                ax = Axis(name, ref.outer, ref.inner) if ok else None
            row.append(ax if ok else None)
        axes[key] = tuple(row)
    per_head = {key: (dims[0] if len(dims) == 1 else tuple(dims), group) for key, (dims, group) in head_axes.items()}
    units = {}
    for e, entries in tracer.units.items():
        root = els.find(e)
        if root in names:  # not query heads that copy their keys' layout: their outputs are not the group's units
            units.setdefault(names[root], []).extend(Unit(w, nrm) for w, nrm in entries)
        elif root in els.members and not els.frozen(root):  # a writer cut into parts: each part observes its channels
            at = 0
            for part, size in els.parts(root):
                if part in names:
                    units.setdefault(names[part], []).extend(Unit(w, nrm, (at, at + size)) for w, nrm in entries)
                at += size
    coverage = Coverage()
    copies = {els.find(part): k for part, k, _ in packed.values()}  # a packed element's units are its projection's k x n channels
    for r in roots:
        size = els.size[r] * (copies.get(r, 1) if len(els.writers[r]) == 1 else 1)
        if not els.frozen(r):
            coverage.permutable += size
            coverage.hidden += size
            continue
        reasons = [x for x in els.reasons[r] if x != "model output"]
        if reasons:
            coverage.hidden += size
            coverage.frozen.setdefault(reasons[0], []).extend(els.writers[r] or [labels.get(r, f"group{r}")])
    blocks = {els.find(e): where for e, where in tracer.attention_blocks.items()}
    # observed at the packed projection (copies stacked: interleaved ones are aligned on their weights)
    blocks |= {els.find(part): els.writers[r][0] for r, (part, _, interleaved) in packed.items() if els.writers[r] and not interleaved}
    heads = {names[r]: (blocks.get(r), els.heads.get(r, 1)) for r in names if r in els.heads or r in blocks}
    local = {key: (dim, names[els.find(e)]) for key, (dim, e) in tracer.grouped.items()
             if els.find(e) in names and axes[key][0] is not None}  # its rows move: so must its local inputs
    grouped = {group for _, group in local.values()}
    coverage.heads = sum(count > 1 and g not in grouped for g, (_, count) in heads.items())
    coverage.grouped = len(grouped)
    used = {ax.group for row in axes.values() for ax in row if ax is not None}
    cats = {r: name for r, name in cats.items() if name in used}  # not a piece cut again in place (Phi-3's q|k|v slices)
    coverage.concats = len(cats)
    def part(p, size):  # a query piece cut from a packed projection (GQA) moves as copies of its key/value heads' layout
        if p in expanded and expanded[p][0] in names:
            base, outer, mid = expanded[p]
            return Axis(names[base], outer, 1, mid, els.heads[base] if mid > 1 else 1)
        return names.get(p, size)

    concat = {name: tuple(part(p, size) for p, size in els.parts(r)) for r, name in cats.items()}
    whole = {expanded[r][0] if r in expanded else r for r in map(els.find, els.whole)}
    whole = frozenset(names[r] for r in whole if r in names and heads.get(names[r], (None, 1))[1] > 1)
    coverage.whole = len(whole)
    return AlignmentSpec(tuple(names[r] for r in live), axes, {g: tuple(u) for g, u in units.items()}, coverage, heads, local, concat, per_head,
                         whole)


__all__ = ["Coverage", "TraceError", "derive_spec"]
