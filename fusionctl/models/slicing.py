"""How the elements a tensor's axes carry travel through indexing, slicing and splitting: a slice
or an uneven split of a channel axis cuts its element into pieces (Elements.cut), equal pieces of
one are packed copies, anything else freezes what it reads. Pure functions of shapes and elements."""

from __future__ import annotations

import torch

from fusionctl.models.elements import Elements, Ref


def gather_refs(els: Elements, x: list, index: tuple) -> list | None:
    """x[..., t, ...] with one integer tensor t and full slices elsewhere (a relative-position bias
    table read by its index): t's axes replace the gathered one, whose element freezes; the other
    axes keep theirs. None for any other advanced indexing."""
    tensors = [k for k, i in enumerate(index) if not (i is Ellipsis or i == slice(None))]
    if len(tensors) != 1 or index.count(Ellipsis) > 1 or not isinstance(t := index[tensors[0]], torch.Tensor) or \
            t.is_floating_point() or t.dtype == torch.bool:
        return None
    k = tensors[0] if Ellipsis not in index[: tensors[0]] else len(x) - (len(index) - tensors[0])
    if x[k] is not None:
        els.freeze(x[k].el, "gathered along a channel axis")
    return x[:k] + [None] * t.dim() + x[k + 1:]


def index_refs(els: Elements, x: list, index, shape, where: str = "") -> list | None:
    """Basic indexing x[index] (ints, slices, None, ...): an int drops its axis, a full slice keeps
    its element, a partial one (step 1) cuts it there (Elements.cut) and keeps the piece's, one of
    step k through the whole axis (x[..., ::2], x[..., 1::2]) reads interleaved copies
    (Elements.pack), anything else freezes it, None adds an axis. None for advanced (tensor or
    list) indexing, which the caller freezes whole."""
    index = index if isinstance(index, tuple) else (index,)
    if not all(i is None or i is Ellipsis or isinstance(i, (int, slice)) for i in index):
        return gather_refs(els, x, index)
    used = sum(i is not None and i is not Ellipsis for i in index)
    if Ellipsis in index:
        at = index.index(Ellipsis)
        index = index[:at] + (slice(None),) * (len(x) - used) + index[at + 1:]
    out, axis = [], 0
    for i in index:
        if i is None:
            out.append(None)
            continue
        ref, kept = x[axis], range(*i.indices(shape[axis])) if isinstance(i, slice) else None
        if kept == range(shape[axis]):
            out.append(ref)
        elif kept is not None and not len(kept):  # nothing kept: no units to move
            out.append(None)
        elif kept is not None and kept.step == 1 and len(kept) and (piece := cut_piece(els, ref, kept, shape[axis], where)) is not False:
            out.append(piece)
        elif kept is not None and kept.step > 1 and kept.step * len(kept) == shape[axis] and ref is not None and \
                (ref.outer, ref.inner, ref.part) == (1, 1, 0):  # every k-th unit from one of the first k: interleaved copies
            out.append(Ref(els.pack(ref.el, kept.step, where, interleaved=True)))
        else:
            if ref is not None and not els.keep_in_place(ref):  # a slice within each head: whole heads
                els.freeze(ref.el, "slice along a channel axis")
            if isinstance(i, slice):
                out.append(None)
        axis += 1
    return out + list(x[axis:])


def cut_piece(els: Elements, ref: Ref | None, kept: range, size: int, where: str):
    """The Ref of units kept[0]:kept[-1]+1 of an axis of `size` units carrying `ref` (None if none), once
    its element is cut there (Elements.cut); False if it cannot be."""
    if ref is None or (ref.outer, ref.inner, ref.part) != (1, 1, 0):
        return None if ref is None else False
    sizes = [n for n in (kept.start, len(kept), size - kept.stop) if n]
    pieces = els.cut(ref.el, sizes, where)
    if pieces is None:
        return False
    piece = pieces[1 if kept.start else 0]
    return None if piece is None else Ref(piece)


def split_refs(els: Elements, x: list, dim: int, sizes: list, drop: bool, where: str) -> tuple:
    """A split (chunk, split, unbind) of axis `dim` into pieces of `sizes`. Uneven pieces, or pieces
    at a concatenation's seams, cut its element (Elements.cut), each piece moving on its own; other
    equal pieces of a whole axis are packed copies of one element that move together (q, k, v of
    one Linear; a GLU's value and gate); anything else holds some of its units only, so it freezes.
    The other axes carry on (unbind drops the axis)."""
    pieces = len(sizes)
    ref = x[dim]
    whole = ref is not None and not drop and pieces > 1 and (ref.outer, ref.inner, ref.part) == (1, 1, 0)
    # uneven pieces, or a concatenation split at its parts' seams (MixNet's mixed convs): cut there
    if whole and (len(set(sizes)) > 1 or els.find(ref.el) in els.members) and (cut := els.cut(ref.el, list(sizes), where)) is not None:
        return tuple([(Ref(p) if p is not None else None) if k == dim else r for k, r in enumerate(x)] for p in cut)
    if whole and len(set(sizes)) == 1:
        part = Ref(els.pack(ref.el, pieces, where))
        return tuple([part if k == dim else r for k, r in enumerate(x)] for _ in range(pieces))
    if ref is not None and not els.keep_in_place(ref):  # pieces of every head alike: whole heads
        els.freeze(ref.el, "slice along a channel axis")
    return tuple([r for k, r in enumerate(x) if k != dim] if drop else [None if k == dim else r for k, r in enumerate(x)] for _ in range(pieces))
