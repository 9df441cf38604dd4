"""How the elements a tensor's axes carry (elements.py) travel through broadcasting, permutes,
reshapes, reductions, matrix products and concatenation. Pure functions of shapes and elements;
no torch.fx here."""

from __future__ import annotations

import math

from fusionctl.models.elements import Elements, Ref


def iter_refs(dsc):
    """Every Ref in a tensor's descriptor (a list per axis) or a tuple of descriptors."""
    if isinstance(dsc, tuple):
        yield from (r for d in dsc for r in iter_refs(d))
    elif isinstance(dsc, list):
        yield from (r for r in dsc if r is not None)


def unify(els: Elements, a: Ref | None, b: Ref | None, where: str) -> Ref | None:
    """Two axes that must carry the same permutation (a residual sum): one element, or frozen."""
    if a is None or b is None:
        r = a if b is None else b
        if r is not None and els.keep_in_place(r):  # within heads, by a fixed table: heads move whole
            return r
        if r is not None:
            els.freeze(r.el, f"combined with an unaligned tensor at {where}")
        return None
    if (a.outer, a.inner, a.part) != (b.outer, b.inner, b.part):
        for heads, other in ((a, b), (b, a)):
            if els.index_heads(heads, other, where) or els.shared_by_heads(heads, other) or els.expand_heads(heads, other, where):
                return heads
        reason = f"layouts differ at {where}" if a.part == b.part else "heads met a tensor split otherwise (a bias per head?)"
        for r in (a, b):  # an axis of one entry per head (copies of a key's, a table) freezes the heads it indexes too
            els.freeze(r.el, reason)
            if (owner := els.head_of.get(els.find(r.el))) is not None:
                els.freeze(owner, reason)
        return a
    return Ref(els.union(a.el, b.el, where), a.outer, a.inner, a.part)


def unify_all(els: Elements, refs: list, where: str) -> Ref | None:
    """Several axes that must carry the same permutation: unify them in turn."""
    acc, *rest = refs
    for r in rest:
        acc = unify(els, acc, r, where)
    return acc


def broadcast_refs(els: Elements, operands, out_shape, where: str) -> list:
    """An element-wise op: axes aligned from the right unify, broadcast (size-1) axes do not count."""
    result: list[Ref | None] = [None] * len(out_shape)
    for axis in range(1, len(out_shape) + 1):
        refs = [dsc[-axis] for dsc, shape in operands if len(shape) >= axis and shape[-axis] > 1]
        if out_shape[-axis] <= 1 or not refs:
            continue
        result[-axis] = unify_all(els, refs, where)
    return result


def permute_refs(x: list, name: str, args: list) -> list:
    order = list(range(len(x)))
    if name == "permute":
        order = list(args[0]) if len(args) == 1 and isinstance(args[0], (tuple, list)) else list(args)
    else:
        a, b = (d % len(x) for d in args[:2])
        if name == "movedim":
            order.insert(b, order.pop(a))
        else:
            order[a], order[b] = order[b], order[a]
    return [x[i % len(x)] for i in order]


def reshape_refs(els: Elements, x: list, before: list, after: list, where: str) -> list:
    """Match runs of merged or split axes; a run may carry one element, which keeps the axes
    merged before it as `outer` and after it as `inner` (a C x H x W flatten: inner = H*W)."""
    if 0 in before or 0 in after:  # an empty tensor holds no units (DeepSeek-V4 reshapes one)
        return [None] * len(after)
    result: list[Ref | None] = []
    i = j = 0
    while i < len(before) and j < len(after):
        run_in, run_out = [i], [j]
        a, b = before[i], after[j]
        while a != b:
            if a < b:
                i += 1
                run_in.append(i)
                a *= before[i]
            else:
                j += 1
                run_out.append(j)
                b *= after[j]
        i, j = i + 1, j + 1
        refs = [(k, x[k]) for k in run_in if x[k] is not None]
        sizes = [after[k] for k in run_out if after[k] > 1]
        if len(run_in) == len(run_out) == 1:  # an axis the reshape leaves alone (heads, when a batch axis splits)
            result.append(x[run_in[0]])
            continue
        heads = _heads(els, refs, [before[k] for k in run_in if before[k] > 1], sizes, where)
        first = refs[0][1] if refs and refs[0][0] == run_in[0] else None
        if heads is None and len(refs) == 1 and len(run_in) == 2 and len(sizes) == 1 and first is not None and \
                (first.part, first.outer, first.inner) == (1, 1, 1):  # (heads, m) merged, the m channels moved by nothing
            result.append(Ref(els.head_blocks(first.el), 1, before[run_in[1]]))
            continue
        if heads is not None:
            result += [heads.pop(0) if after[m] > 1 else None for m in run_out]
        elif not refs:
            result += [None] * len(run_out)
        elif len(refs) == 1 and len(sizes) == 1:  # merged with axes that carry nothing (XGLM's batch x heads for a bmm)
            k, ref = refs[0]
            outer = math.prod(before[m] for m in run_in if m < k) * ref.outer
            inner = math.prod(before[m] for m in run_in if m > k) * ref.inner
            result += [Ref(ref.el, outer, inner, ref.part) if after[m] > 1 else None for m in run_out]
        elif len(refs) == 1 and len(run_in) == 1 and (unflat := _unflatten(refs[0][1], before[run_in[0]], [after[m] for m in run_out])):
            result += unflat
        elif len(run_in) == 1 and (r := refs[0][1]).part == 2 and (r.outer, r.inner) == (1, 1) and els.keep_in_place(r):
            result += [None] * len(run_out)  # the channels within each head split alike in every head (Llama 4's complex pairs)
        else:
            for _, r in refs:
                els.freeze(r.el, f"reshape splitting or merging channel axes at {where}")
            result += [None] * len(run_out)
    return result + [None] * (len(after) - len(result))


def complex_refs(els: Elements, x: list, name: str, where: str) -> list:
    """view_as_complex pairs the last axis's two entries into one complex number (the axis goes),
    view_as_real splits each number into a new last axis of two."""
    if name == "view_as_real":
        return list(x) + [None]
    if x[-1] is not None:
        els.freeze(x[-1].el, f"complex pairs across a channel axis at {where}")
    return list(x[:-1])


def _unflatten(ref: Ref, length: int, sizes: list) -> list | None:
    """An axis of `length` entries, laid out as (outer, own, inner), split back into the axes merged
    into it and the axis of its own entries (a conv weight flattened to standardise it, restored by
    reshape_as; batch and heads merged for a bmm, split again), else None."""
    own = length // (ref.outer * ref.inner)
    if (ref.outer, ref.inner) == (1, 1) or own == 1:
        return None
    for lead, size in enumerate(sizes):
        if size == own and math.prod(sizes[:lead]) == ref.outer and math.prod(sizes[lead + 1:]) == ref.inner:
            return [Ref(ref.el, part=ref.part) if k == lead else None for k in range(len(sizes))]
    return None


def _heads(els: Elements, refs: list, sizes_in: list, sizes_out: list, where: str) -> list | None:
    """A reshape splitting one element's axis into (heads, d), or merging (heads, d) back: the
    refs of the non-trivial output axes, else None."""
    whole = [r for _, r in refs if (r.outer, r.inner) == (1, 1)]
    if len(refs) == 1 and whole and whole[0].part == 0 and len(sizes_in) == 1 and len(sizes_out) in (2, 3):
        el = whole[0].el if len(sizes_out) == 2 else els.pack(whole[0].el, sizes_out[0], where, "heads")  # (3, heads, d): q, k, v packed
        els.set_heads(el, sizes_out[-2], where)
        return [None] * (len(sizes_out) - 2) + [Ref(el, part=1), Ref(el, part=2)]
    if len(refs) == 2 and len(whole) == 2 and [r.part for r in whole] == [1, 2] and len(sizes_in) == 2 and len(sizes_out) == 1:
        return [unify(els, Ref(whole[0].el), Ref(whole[1].el), where)]
    return None


def reduce_refs(x: list, dims, ndim: int, keep: bool, out_dim: int) -> list:
    """A reduction over some axes (a mean over space): the others keep their elements."""
    if dims is None:
        return [None] * out_dim
    dims = [d % ndim for d in (dims if isinstance(dims, (tuple, list)) else [dims])]
    return [None if k in dims else r for k, r in enumerate(x) if keep or k not in dims]


def window_refs(els: Elements, x: list, k: int, where: str) -> list:
    """An op over the last k axes (pooling, resampling): see along_refs."""
    return along_refs(els, x, range(len(x) - k, len(x)), where)


def pad_refs(els: Elements, x: list, pad, where: str) -> list:
    """F.pad's (before, after) amounts, from the last axis back: an axis padded by nothing keeps its
    element (Swin pads H and W of a channels-last map with (0, 0) for C)."""
    return along_refs(els, x, [len(x) - 1 - i for i in range(len(pad) // 2) if pad[2 * i] or pad[2 * i + 1]], where)


def repeat_refs(els: Elements, x: list, before, after, where: str, interleave: bool = False) -> list:
    """tile / repeat (k whole copies of a channel axis: outer*k) and repeat_interleave by an int (each
    unit k times in a row: inner*k); new leading axes carry nothing. Repeated heads: a block of
    copies per head (grouped-query keys: Elements.expand_heads); repeated channels within heads freeze."""
    lead = len(after) - len(before)
    out = [None] * lead
    for r, b, a in zip(x, before, after[lead:]):
        if r is not None and a != b and r.part == 0:
            r = Ref(r.el, r.outer, r.inner * (a // b)) if interleave else Ref(r.el, r.outer * (a // b), r.inner)
        elif r is not None and a != b and r.part == 1 and (r.outer, r.inner) == (1, 1):
            r = Ref(els.head_blocks(r.el), 1, a // b) if interleave else Ref(els.head_blocks(r.el), a // b, 1)
        elif r is not None and a != b:
            els.freeze(r.el, f"repeated along a channel axis at {where}")
            r = None
        out.append(r)
    return out


def unfold_refs(els: Elements, x: list, before, after, where: str) -> list:
    """F.unfold (im2col): (N, C, *space) -> (N, C x kernel positions, blocks): inner * kernel size."""
    c = x[1]
    if c is not None and c.part != 0:
        els.freeze(c.el, f"unfolded heads at {where}")
        c = None
    return [x[0], Ref(c.el, c.outer, c.inner * (after[1] // before[1])) if c is not None else None, None]


def along_refs(els: Elements, x: list, axes, where: str) -> list:
    """An op that mixes, shifts or reverses positions along some axes (a window, pad, roll, flip or cumsum):
    it would move an element's units on them, so that element freezes; the other axes keep theirs."""
    axes = {a % len(x) for a in axes}
    for a in axes:
        if x[a] is not None:
            els.freeze(x[a].el, f"pooling, resampling, padding, rolling, flipping or a cumulative sum along a channel axis at {where}")
    return [None if a in axes else r for a, r in enumerate(x)]


def matmul_refs(els: Elements, a: list, b: list, a_shape, b_shape, out_shape, where: str) -> list:
    """A matrix product a @ b (both at least 2-D): the leading (batch) axes broadcast (first: heads
    there may copy the other side's), a permutation of the contracted axis on both sides cancels,
    so those axes unify; the rows keep a's element, the columns b's."""
    batch = broadcast_refs(els, [(a[:-2], a_shape[:-2]), (b[:-2], b_shape[:-2])], out_shape[:-2], where)
    unify(els, a[-1], b[-2], where)
    return batch + [a[-2], b[-1]]


def cat_refs(els: Elements, descs: list, sizes: list, dim: int, ndim: int, where: str) -> list:
    """A concatenation along `dim` (pieces of `sizes`): the joined axis carries a concatenation
    element whose parts are the pieces' elements (None for a piece no element carries), so each
    part keeps its own group; a piece laid out otherwise (gate blocks, a flattened map, heads)
    freezes every piece. Empty pieces (Phi-3's rotary leaves no channels to pass) add nothing. The
    other axes unify."""
    descs, sizes = [d for d, n in zip(descs, sizes) if n] or descs, [n for n in sizes if n] or sizes
    if len(descs) == 1:
        return list(descs[0]) if descs[0] is not None else [None] * ndim
    result: list[Ref | None] = [None] * ndim
    for axis in range(ndim):
        refs = [dsc[axis] if dsc is not None else None for dsc in descs]
        if axis == dim:
            live = [r for r in refs if r is not None]
            if live and all((r.outer, r.inner, r.part) == (1, 1, 0) for r in live):
                result[axis] = Ref(els.concat([(None if r is None else r.el, n) for r, n in zip(refs, sizes)], where))
            else:
                for r in live:
                    els.freeze(r.el, "concatenation of axes laid out otherwise")
        elif any(dsc is not None for dsc in descs):
            result[axis] = unify_all(els, [dsc[axis] for dsc in descs if dsc is not None], where)
    return result


def stack_refs(els: Elements, descs: list, dim: int, ndim: int, where: str) -> list:
    """torch.stack along a new axis `dim` of an `ndim`-axis output: the inputs' axes unify one by one
    (a Selective Kernel's paths are summed over the new axis later), which itself carries no element."""
    known = [dsc for dsc in descs if dsc is not None]
    if len(known) < len(descs):  # a stacked input the tracer did not follow: its order is unknown
        for dsc in known:
            for r in dsc:
                if r is not None:
                    els.freeze(r.el, f"stacked with an unaligned tensor at {where}")
        return [None] * ndim
    result = [unify_all(els, [dsc[axis] for dsc in known], where) for axis in range(ndim - 1)]
    return result[:dim] + [None] + result[dim:]
