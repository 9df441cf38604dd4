"""The torch.fx Interpreter behind traced specs: one handler per op or module kind, each saying which element every axis
of its output carries (rules: trace.py; bookkeeping: elements.py, axes.py, slicing.py; modules: module_rules.py)."""

from __future__ import annotations

import torch
import torch.fx as fx
from torch import nn

from fusionctl.models import op_kinds as ops
from fusionctl.models.axes import (along_refs, broadcast_refs, cat_refs, complex_refs, iter_refs, matmul_refs, pad_refs, permute_refs,
                                   reduce_refs, repeat_refs, reshape_refs, stack_refs, unfold_refs, unify, window_refs)
from fusionctl.models.elements import Elements, Ref
from fusionctl.models.module_rules import FUNCTIONAL, ModuleRules
from fusionctl.models.slicing import index_refs, split_refs


class AxisTracer(ModuleRules, fx.Interpreter):
    def __init__(self, gm: fx.GraphModule, original: nn.Module):
        super().__init__(gm)
        self.original = original
        self.els = Elements()
        self.desc: dict[fx.Node, object] = {}  # node -> list[Ref | None] per axis (or a tuple of them)
        self.links: dict[str, list[Ref | None]] = {}  # state key -> per-axis element
        self.linked_at: dict[str, set[str]] = {}  # state key -> where it was linked (its own get_attr: the key)
        self.units: dict[int, list[list]] = {}  # opened element -> [[writer, norm or None]]
        self.writer_node: dict[fx.Node, list] = {}  # node whose value is a writer's output (through reshapes) -> its unit
        self.attention_blocks: dict[int, str] = {}  # element of an nn.MultiheadAttention's channels -> the block
        self.grouped: dict[str, tuple[int, int]] = {}  # a grouped conv's weight -> (its block-local input axis, the element)
        self._dims = {k: v.dim() for k, v in original.state_dict().items()}

    # -- plumbing -----------------------------------------------------------------------------

    def run_node(self, n: fx.Node):
        out = super().run_node(n)
        self.desc[n] = self.describe(n, out)
        return out

    def d(self, arg):
        return self.desc.get(arg) if isinstance(arg, fx.Node) else None

    def val(self, arg):
        return self.env[arg] if isinstance(arg, fx.Node) else arg

    def link(self, key: str, dim: int, ref: Ref | None, where: str) -> None:
        """Tie axis `dim` of state entry `key` to `ref` (unifying with an earlier use of the entry)."""
        self.linked_at.setdefault(key, set()).add(where)
        axes = self.links.setdefault(key, [None] * self.state_dims(key))
        if ref is None:
            return
        if self.els.keep_in_place(ref):  # shared by every head (a norm over each): it stays, heads move whole
            return
        if ref.part:  # a parameter along the heads axis (talking heads) cannot follow them
            self.els.freeze(ref.el, f"a parameter read along the heads of a group at {where}")
            return
        old = axes[dim]
        if old is None:
            axes[dim] = ref
        elif (old.outer, old.inner) != (ref.outer, ref.inner):
            self.els.freeze(old.el, f"shared entry {key} read two ways")
            self.els.freeze(ref.el, f"shared entry {key} read two ways")
        else:
            self.els.union(old.el, ref.el, where)

    def state_dims(self, key: str) -> int:
        return self._dims[key]

    def freeze_all(self, descs, reason: str) -> None:
        for dsc in descs:
            for ref in iter_refs(dsc):
                self.els.freeze(ref.el, reason)

    def fresh(self, out, reason: str):
        """Frozen elements for every axis of an output nobody can vouch for."""
        if isinstance(out, torch.Tensor):
            return [Ref(self.els.new(s, frozen=reason)) if s > 1 and i > 0 else None for i, s in enumerate(out.shape)]
        if isinstance(out, (tuple, list)):
            return tuple(self.fresh(o, reason) for o in out)
        return None

    def open(self, size: int, writer: str) -> Ref:
        e = self.els.new(size, writer)
        self.units[e] = [[writer, None]]
        return Ref(e)

    # -- handlers -----------------------------------------------------------------------------

    def describe(self, n: fx.Node, out):
        if n.op == "placeholder":
            return self.fresh(out, "model input")
        if n.op == "get_attr":
            key = str(n.target)
            if not isinstance(out, torch.Tensor) or key not in self._dims:  # a constant (a non-persistent buffer): it never moves
                return [None] * out.dim() if isinstance(out, torch.Tensor) else None
            refs = [Ref(self.els.new(s)) if s > 1 and dim < self.channel_axes(key) else None for dim, s in enumerate(out.shape)]
            for dim, ref in enumerate(refs):
                self.link(key, dim, ref, key)
            return refs
        if n.op == "output":
            self.freeze_all(self.all_descs(n.args), "model output")
            return None
        if n.op == "call_module":
            return self.on_module(n, self.original.get_submodule(str(n.target)), out)
        name = n.target if n.op == "call_method" else getattr(n.target, "__name__", str(n.target))
        return self.on_function(n, str(name), out)

    def mark_norm(self, n: fx.Node, where: str, affine: bool) -> None:
        unit = self.writer_node.get(n.args[0])
        if unit is not None and unit[1] is None and affine:
            unit[1] = where

    def layer_norm(self, n, x, k: int, where: str, affine: bool, prefix: str | None = None, weight=None, bias=None, point: bool = True):
        """LayerNorm or RMSNorm over the last k axes (symmetric in each); point: REPAIR corrects there (RMSNorm: no bias)."""
        if affine:
            for name, node in (("weight", weight), ("bias", bias)):
                if prefix is not None and f"{prefix}.{name}" in self._dims:
                    for dim in range(k):
                        self.link(f"{prefix}.{name}", dim, x[len(x) - k + dim], where)
                elif isinstance(node, fx.Node) and self.d(node) is not None:
                    for dim, ref in enumerate(self.d(node)):
                        unify(self.els, ref, x[len(x) - k + dim], where)
        self.mark_norm(n, where, affine and point)
        return list(x)

    def on_function(self, n: fx.Node, name: str, out):
        where = n.name
        args = list(n.args)
        x = self.d(args[0]) if args else None
        tensors = [a for a in args if isinstance(a, fx.Node) and isinstance(self.env.get(a), torch.Tensor)]
        if name in ops.SPLIT and isinstance(out, (tuple, list)) and x is not None:
            return self.split(n, name, x, out)
        if name == "setitem":  # x[index] = value, in place: unless neither carries an element, both freeze
            self.freeze_all([x, *self.all_descs(args[2:])], "written into by an in-place assignment")
            return None
        if name in ops.CREATION:  # a constant one (an accumulator sums take the layout of) may carry any element
            return [Ref(self.els.new(s)) if name in ops.CONSTANT and s > 1 and i > 0 else None for i, s in enumerate(out.shape)]
        many = isinstance(out, (tuple, list)) and any(isinstance(o, torch.Tensor) for o in out)
        if not isinstance(out, torch.Tensor) and not many and name not in ("getitem", "getattr"):
            self.freeze_held(n, out)
            return None  # sizes, shapes and other plain values
        if name in ops.UNARY or name.rstrip("_") in ops.UNARY:
            if name in ("softmax", "log_softmax"):  # along heads, it mixes the heads' differently ordered channels
                self.freeze_all([[r for r in [x[self.dim_arg(n, 1) % len(x)]] if r is not None and r.part == 1]], "softmax across heads")
            return list(x)
        if name == "scaled_dot_product_attention":  # softmax(q k^T) v: as the two matrix products it is
            q, k, v = (self.d(a) for a in args[:3])
            self.freeze_all([[r for r in q[-2:] + k[-2:] + v[-2:-1] if r is not None and r.part == 1]], "attention across heads")
            shapes = [self.val(a).shape for a in args[:3]]
            if n.kwargs.get("enable_gqa") and shapes[0][-3] != shapes[1][-3]:  # each key/value head serves consecutive query heads
                k, v = (repeat_refs(self.els, d, sh, (*sh[:-3], shapes[0][-3], *sh[-2:]), where, True) for d, sh in ((k, shapes[1]), (v, shapes[2])))
            batch = broadcast_refs(self.els, [(d[:-2], sh[:-2]) for d, sh in zip((q, k, v), shapes)], out.shape[:-2], where)
            unify(self.els, q[-1], k[-1], where)
            unify(self.els, k[-2], v[-2], where)
            mask = args[3] if len(args) > 3 else n.kwargs.get("attn_mask")
            if isinstance(self.val(mask), torch.Tensor):  # added to the scores q k^T (a bias per head, say): broadcast with them
                scores = (*out.shape[:-2], shapes[0][-2], shapes[1][-2])
                mask_desc = self.d(mask) or [None] * self.val(mask).dim()
                batch = broadcast_refs(self.els, [(batch + [q[-2], k[-2]], scores), (mask_desc, self.val(mask).shape)], scores, where)[:-2]
            return batch + [q[-2], v[-1]]
        if name.rstrip("_") in ops.BINARY or (name in ("max", "min") and len(tensors) == 2):  # torch.max(a, b) is element-wise
            return self.binary(n, out, where)
        if name in ops.PERMUTE:
            return self.permute(n, name, x, out)
        if name in ops.RESHAPE | ops.COMPLEX_VIEWS:
            return self.reshape(n, x, self.val(args[0]).shape, out.shape) if name in ops.RESHAPE else complex_refs(self.els, x, name, n.name)
        if name in ops.POOL:
            return window_refs(self.els, x, ops.spatial_axes(name, len(x)), where)
        if name == "pad":
            return pad_refs(self.els, x, args[1] if len(args) > 1 else n.kwargs["pad"], where)
        if name in ("roll", "flip") or name in ops.CUMULATIVE:
            return along_refs(self.els, x, ops.shifted_axes(name, n.args, n.kwargs, len(x)), where)
        if name in ("tile", "repeat", "repeat_interleave") and x is not None:
            counts = args[1] if len(args) > 1 else n.kwargs.get("repeats")  # repeat_interleave's: an int, or one per entry
            if name == "repeat_interleave" and (len(args) < 3 and n.kwargs.get("dim") is None or isinstance(counts, fx.Node)):
                self.freeze_all([x], f"repeated along a channel axis at {where}")  # flattened, or uneven
                return [None] * out.dim()
            return repeat_refs(self.els, x, self.val(args[0]).shape, out.shape, where, name == "repeat_interleave")
        if name == "unfold" and x is not None:  # F.unfold (im2col), or Tensor.unfold(dimension, size, step): windows
            if n.op == "call_function":
                return unfold_refs(self.els, x, self.val(args[0]).shape, out.shape, where)
            return along_refs(self.els, x, [n.args[1] if len(n.args) > 1 else n.kwargs["dimension"]], where) + [None]
        if name in ("outer", "ger"):  # a[:, None] * b[None, :] (a rotary embedding's angles)
            return [(self.d(args[0]) or [None])[0], (self.d(args[1]) or [None])[0]]
        if name in ("expand", "expand_as"):  # broadcasts size-1 axes (which carry no element) and may add leading ones
            return [None] * (out.dim() - len(x)) + list(x)
        if name in ops.MATMUL and len(tensors) == 2 and min(self.val(a).dim() for a in tensors) >= 2:
            a, b = tensors
            return matmul_refs(self.els, self.d(a), self.d(b), self.val(a).shape, self.val(b).shape, out.shape, where)
        if name in ops.GROUPED_MM and (refs := self.grouped_mm(args, where)) is not None:
            return refs
        if name == "einsum":
            return self.einsum(n, out, where)
        if name in ops.REDUCE:
            return self.reduce(n, x, self.val(args[0]).dim(), out)
        if name in ("layer_norm", "rms_norm"):
            shape = args[1] if len(args) > 1 else n.kwargs["normalized_shape"]
            weight = args[2] if len(args) > 2 else n.kwargs.get("weight")
            bias = args[3] if len(args) > 3 and name == "layer_norm" else n.kwargs.get("bias")
            k = len(shape) if isinstance(shape, (tuple, list)) else 1
            return self.layer_norm(n, x, k, where, weight is not None, weight=weight, bias=bias, point=name == "layer_norm")
        if name == "cat":
            descs, values, dim = self.joined(n, out)
            return cat_refs(self.els, descs, [v.shape[dim] for v in values], dim, out.dim(), where)
        if name == "stack":
            descs, _, dim = self.joined(n, out)
            return stack_refs(self.els, descs, dim, out.dim(), where)
        if name in FUNCTIONAL:
            return self.on_functional(n, name, x, out)
        if name == "normalize":  # (input, p, dim): x / its norm along dim, an element-wise op once that norm is
            dim = n.args[2] if len(n.args) > 2 else n.kwargs.get("dim", 1)
            self.freeze_reduced_heads([x[dim % len(x)]])
            return list(x)
        if name in ("norm", "vector_norm"):  # (input, p, dim, keepdim): a reduction over dim
            return reduce_refs(x, self.dim_arg(n, 2) if len(n.args) > 2 or "dim" in n.kwargs else None, len(x),
                               n.kwargs.get("keepdim", n.args[3] if len(n.args) > 3 else False), out.dim())
        if name in ("getitem", "getattr"):
            return self.getitem(n, out)
        self.freeze_all(self.all_descs((n.args, n.kwargs)), f"unsupported op {name}")  # lists of tensors too (a stack)
        return self.fresh(out, f"unsupported op {name}")

    def binary(self, n, out, where):
        operands = [(self.d(a), self.val(a).shape) for a in n.args if isinstance(a, fx.Node) and isinstance(self.val(a), torch.Tensor)]
        return broadcast_refs(self.els, operands, out.shape, where)

    def permute(self, n, name, x, out):
        self.follow_writer(n)
        return permute_refs(x, name, [self.val(a) for a in n.args[1:]])

    def reshape(self, n, x, before, after):
        if len(after) == len(before):
            self.follow_writer(n)
        return reshape_refs(self.els, x, list(before), list(after), n.name)

    def follow_writer(self, n: fx.Node) -> None:
        """A permute or same-rank reshape of a writer's output is still that writer's output (for norms after it)."""
        if n.args and n.args[0] in self.writer_node:
            self.writer_node[n] = self.writer_node[n.args[0]]

    def einsum(self, n, out, where):
        """Every axis of one letter, in the inputs and the output, must carry the same permutation:
        the sum is over products, and a permutation applied to every occurrence of an index cancels."""
        operands = list(n.args[1]) if len(n.args) == 2 and isinstance(n.args[1], (list, tuple)) else list(n.args[1:])
        equation = n.args[0].replace(" ", "")
        inputs, arrow, output = equation.partition("->")
        descs = [self.d(a) for a in operands]
        if "." in equation or not arrow or any(d is None for d in descs):
            self.freeze_all(descs, "einsum with an ellipsis or an implicit output")
            return self.fresh(out, "einsum with an ellipsis or an implicit output")
        letters: dict[str, Ref | None] = {}
        for spec, desc, a in zip(inputs.split(","), descs, operands):
            for letter, ref, size in zip(spec, desc, self.val(a).shape):
                if size > 1:
                    letters[letter] = unify(self.els, letters[letter], ref, where) if letter in letters else ref
        self.freeze_reduced_heads([r for letter, r in letters.items() if letter not in output and inputs.count(letter) == 1])
        return [letters.get(letter) if size > 1 else None for letter, size in zip(output, out.shape)]

    def freeze_reduced_heads(self, reduced: list) -> None:
        """A sum or norm over heads mixes differently ordered channels (within a head, order is moot)."""
        self.freeze_all([[r for r in reduced if r is not None and r.part == 1]], "a reduction over heads")

    def dim_arg(self, n, at: int) -> int:
        return n.args[at] if len(n.args) > at else n.kwargs.get("dim", -1)

    def reduce(self, n, x, ndim, out):
        dims = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim")
        reduced = range(ndim) if dims is None else [d % ndim for d in (dims if isinstance(dims, (tuple, list)) else [dims])]
        self.freeze_reduced_heads([x[d] for d in reduced])
        keep = n.kwargs.get("keepdim", n.args[2] if len(n.args) > 2 and isinstance(n.args[2], bool) else False)
        if isinstance(out, torch.Tensor):
            return reduce_refs(x, dims, ndim, keep, out.dim())
        # max/min along a dim also give the indices, which see the order of that axis's units
        self.freeze_all([[x[d % ndim] for d in (dims if isinstance(dims, (tuple, list)) else [dims])]], "indices of a max or min")
        values = reduce_refs(x, dims, ndim, keep, out[0].dim())
        return (values, list(values))

    def split(self, n, name, x, out):
        at = 1 if name == "unbind" else 2  # where the dim argument sits
        dim = (n.args[at] if len(n.args) > at else n.kwargs.get("dim", 0)) % len(x)
        return split_refs(self.els, x, dim, [o.shape[dim] if name != "unbind" else 1 for o in out], name == "unbind", n.name)

    def joined(self, n, out):
        """(descriptors, values, output dim) of the tensors a cat or stack joins: a list of tensors,
        or one node holding a tuple of them (pieces of a split)."""
        parts = n.args[0]
        descs = list(self.d(parts) or ()) if isinstance(parts, fx.Node) else [self.d(p) for p in parts]
        values = self.val(parts) if isinstance(parts, fx.Node) else [self.val(p) for p in parts]
        return descs, values, (n.args[1] if len(n.args) > 1 else n.kwargs.get("dim", 0)) % out.dim()

    def getitem(self, n, out):
        dsc, index = self.d(n.args[0]), self.fetch_args_kwargs_from_env(n)[0][1]
        if isinstance(dsc, tuple):  # a piece of a split, or a max/min's values or indices (by getattr)
            fields = ("values", "indices")
            return dsc[index] if isinstance(index, (int, slice)) else dsc[fields.index(index)] if index in fields else None
        if not isinstance(out, torch.Tensor):
            return None
        basic = index_refs(self.els, dsc, index, self.val(n.args[0]).shape, n.name) if isinstance(dsc, list) else None
        if basic is None:  # advanced indexing, or a value the tracer did not follow (dsc None)
            self.freeze_all([dsc], "indexing a tensor")
        return basic if basic is not None else self.fresh(out, "indexing a tensor")

