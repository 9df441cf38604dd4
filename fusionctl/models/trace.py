"""Alignment specs traced from any torch module (torch.fx), frozen where unsure, with coverage.

A torch.fx Interpreter runs the model on example inputs and gives every axis of every tensor
an element of a union-find (PLeaS-Merging's design): Linear/Conv/Embedding outputs open an
element (a candidate group of hidden units, written by that module); element-wise binary ops
(residual adds, gates) unify their operands' elements; norms, activations, pooling, dropout,
permutes and reshapes of trailing axes carry them on; a C x H x W flatten into a Linear keeps
the channel element with inner = H*W; a depthwise conv keeps its input's element. Parameters
are linked to the elements of the axes they touch. Anything the tracer cannot vouch for — an
unknown op or module, a concatenation or slice along a channel axis, a grouped conv, a
GroupNorm mixing channel blocks, tied weights, a size mismatch — freezes the elements it
touches, as do the model's inputs and outputs. A frozen group is left unpermuted, never
permuted wrongly, and the coverage report names why.
"""

from __future__ import annotations

import logging
import math
import operator
from dataclasses import dataclass, field

import torch
import torch.fx as fx
from torch import nn

from fusionctl.models.spec import AlignmentSpec, Axis, Unit

log = logging.getLogger(__name__)

UNARY = {"relu", "relu_", "gelu", "silu", "sigmoid", "tanh", "hardswish", "hardsigmoid", "leaky_relu", "elu", "selu", "celu",
         "softplus", "mish", "relu6", "hardtanh", "dropout", "dropout1d", "dropout2d", "alpha_dropout", "stochastic_depth",
         "contiguous", "clone", "detach", "float", "double", "half", "to", "type_as", "neg", "abs", "exp", "square", "sqrt",
         "softmax", "log_softmax", "identity"}  # element-wise or along one axis: every axis keeps its element
BINARY = {"add", "iadd", "sub", "isub", "mul", "imul", "truediv", "itruediv", "div", "maximum", "minimum"}
REDUCE = {"mean", "sum", "amax", "amin", "max", "min", "logsumexp", "std", "var"}
POOL = {"max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d",
        "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d"}
RESHAPE = {"flatten", "view", "reshape", "squeeze", "unsqueeze"}
PERMUTE = {"permute", "transpose", "movedim", "swapaxes"}
PASS_MODULES = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.LeakyReLU, nn.ELU,
                nn.Mish, nn.Softplus, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout, nn.Softmax, nn.LogSoftmax)
POOL_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d,
                nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclass(frozen=True)
class Ref:
    """An axis of a tensor laid out as (outer, n, inner) over the n units of element `el`."""

    el: int
    outer: int = 1
    inner: int = 1


@dataclass
class Coverage:
    """What a traced spec aligns: hidden units in permutable groups, and what froze the rest."""

    permutable: int = 0
    hidden: int = 0
    frozen: dict[str, list[str]] = field(default_factory=dict)  # reason -> modules whose units it froze

    def __str__(self) -> str:
        text = f"permutable hidden units: {self.permutable:,} of {self.hidden:,}"
        if self.frozen:
            parts = [f"{', '.join(mods[:3])}{f' (+{len(mods) - 3} more)' if len(mods) > 3 else ''} ({reason})" for reason, mods in self.frozen.items()]
            text += "; frozen: " + "; ".join(parts)
        return text


class Elements:
    """Union-find over candidate groups of units: size, the modules that open them, and freezes."""

    def __init__(self):
        self.parent: list[int] = []
        self.size: list[int] = []
        self.writers: list[list[str]] = []  # per element: modules whose output opens it
        self.reasons: dict[int, list[str]] = {}  # root -> why it is frozen
        self.opened: list[int] = []  # elements opened by a module, in creation order

    def new(self, size: int, writer: str | None = None, frozen: str | None = None) -> int:
        e = len(self.parent)
        self.parent.append(e)
        self.size.append(size)
        self.writers.append([writer] if writer else [])
        if writer:
            self.opened.append(e)
        if frozen:
            self.reasons[e] = [frozen]
        return e

    def find(self, e: int) -> int:
        while self.parent[e] != e:
            self.parent[e] = self.parent[self.parent[e]]
            e = self.parent[e]
        return e

    def freeze(self, e: int, reason: str) -> None:
        self.reasons.setdefault(self.find(e), []).append(reason)

    def frozen(self, e: int) -> bool:
        return self.find(e) in self.reasons

    def union(self, a: int, b: int, where: str) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        if self.size[ra] != self.size[rb]:
            self.freeze(ra, f"size mismatch at {where}")
            self.freeze(rb, f"size mismatch at {where}")
        keep, gone = (ra, rb) if ra < rb else (rb, ra)
        self.parent[gone] = keep
        self.writers[keep] += self.writers[gone]
        if gone in self.reasons:
            self.reasons.setdefault(keep, []).extend(self.reasons.pop(gone))
        return keep


class TraceError(ValueError):
    """The model could not be traced at all (untraceable control flow, wrong example inputs)."""


class AxisTracer(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule, original: nn.Module):
        super().__init__(gm)
        self.original = original
        self.els = Elements()
        self.desc: dict[fx.Node, object] = {}  # node -> list[Ref | None] per axis (or a tuple of them)
        self.links: dict[str, list[Ref | None]] = {}  # state key -> per-axis element
        self.units: dict[int, list[list]] = {}  # opened element -> [[writer, norm or None]]
        self.writer_node: dict[fx.Node, list] = {}  # node whose value is a writer's output (through reshapes) -> its unit
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
        axes = self.links.setdefault(key, [None] * self.state_dims(key))
        if ref is None:
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
            for ref in _refs(dsc):
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
            if not isinstance(out, torch.Tensor):
                return None
            refs = [Ref(self.els.new(s)) if s > 1 else None for s in out.shape]
            key = str(n.target)
            if key in self._dims:
                for dim, ref in enumerate(refs):
                    self.link(key, dim, ref, key)
            return refs
        if n.op == "output":
            self.freeze_all(_flat_descs(self, n.args), "model output")
            return None
        if n.op == "call_module":
            return self.on_module(n, self.original.get_submodule(str(n.target)), out)
        name = n.target if n.op == "call_method" else getattr(n.target, "__name__", str(n.target))
        return self.on_function(n, str(name), out)

    def on_module(self, n: fx.Node, m: nn.Module, out):
        where = str(n.target)
        x = self.d(n.args[0]) if n.args else None
        if isinstance(m, nn.Linear):
            self.link(f"{where}.weight", 1, x[-1] if x else None, where)
            ref = self.open(m.out_features, where)
            self.link(f"{where}.weight", 0, ref, where)
            if m.bias is not None:
                self.link(f"{where}.bias", 0, ref, where)
            self.writer_node[n] = self.units[ref.el][0]
            return list(x[:-1]) + [ref]
        if isinstance(m, nn.modules.conv._ConvNd) and not isinstance(m, nn.modules.conv._ConvTransposeNd):
            return self.conv(n, m, x, where, out)
        if isinstance(m, nn.Embedding):
            ref = self.open(m.embedding_dim, where)
            self.link(f"{where}.weight", 1, ref, where)
            self.writer_node[n] = self.units[ref.el][0]
            return [None] * (out.dim() - 1) + [ref]
        if isinstance(m, BATCH_NORMS):
            for key in ("weight", "bias", "running_mean", "running_var"):
                if f"{where}.{key}" in self._dims:
                    self.link(f"{where}.{key}", 0, x[1], where)
            self.mark_norm(n, where, m.affine)
            return list(x)
        if isinstance(m, nn.LayerNorm):
            return self.layer_norm(n, x, len(m.normalized_shape), where, m.elementwise_affine, prefix=where)
        if isinstance(m, nn.GroupNorm):
            if m.num_groups not in (1, m.num_channels):
                self.els.freeze(x[1].el, f"GroupNorm with {m.num_groups} groups") if x[1] else None
            elif m.affine:
                self.link(f"{where}.weight", 0, x[1], where)
                self.link(f"{where}.bias", 0, x[1], where)
            self.mark_norm(n, where, m.affine)
            return list(x)
        if isinstance(m, PASS_MODULES):
            return list(x)
        if isinstance(m, POOL_MODULES):
            return [x[0], x[1]] + [None] * (out.dim() - 2)
        if isinstance(m, nn.Flatten):
            return self.reshape(n, x, self.val(n.args[0]).shape, out.shape)
        self.freeze_all([x], f"unsupported module {type(m).__name__}")
        return self.fresh(out, f"unsupported module {type(m).__name__}")

    def conv(self, n, m, x, where, out):
        cin = x[1]
        if m.groups == 1:
            self.link(f"{where}.weight", 1, cin, where)
            ref = self.open(m.out_channels, where)
        elif m.groups == m.in_channels and cin is not None and (cin.outer, cin.inner) == (1, 1):
            # depthwise: output channel c*k + j reads input channel c only, so it stays in c's group
            ref = Ref(cin.el, 1, m.out_channels // m.in_channels)
            self.units.setdefault(cin.el, []).append([where, None])
        else:
            self.freeze_all([x], f"grouped conv (groups={m.groups})")
            return self.fresh(out, f"grouped conv (groups={m.groups})")
        self.link(f"{where}.weight", 0, ref, where)
        if m.bias is not None:
            self.link(f"{where}.bias", 0, ref, where)
        self.writer_node[n] = self.units[ref.el][-1]
        return [x[0], ref] + [None] * (len(x) - 2)

    def mark_norm(self, n: fx.Node, where: str, affine: bool) -> None:
        unit = self.writer_node.get(n.args[0])
        if unit is not None and unit[1] is None and affine:
            unit[1] = where

    def layer_norm(self, n, x, k: int, where: str, affine: bool, prefix: str | None = None, weight=None, bias=None):
        """LayerNorm over the last k axes: its statistics are symmetric in every axis it spans."""
        if affine:
            for name, node in (("weight", weight), ("bias", bias)):
                if prefix is not None and f"{prefix}.{name}" in self._dims:
                    for dim in range(k):
                        self.link(f"{prefix}.{name}", dim, x[len(x) - k + dim], where)
                elif isinstance(node, fx.Node) and self.d(node) is not None:
                    for dim, ref in enumerate(self.d(node)):
                        self.unify(ref, x[len(x) - k + dim], where)
        self.mark_norm(n, where, affine)
        return list(x)

    def unify(self, a: Ref | None, b: Ref | None, where: str) -> Ref | None:
        if a is None or b is None:
            for r in (a, b):
                if r is not None:
                    self.els.freeze(r.el, f"combined with an unaligned tensor at {where}")
            return None
        if (a.outer, a.inner) != (b.outer, b.inner):
            self.els.freeze(a.el, f"layouts differ at {where}")
            self.els.freeze(b.el, f"layouts differ at {where}")
            return a
        return Ref(self.els.union(a.el, b.el, where), a.outer, a.inner)

    def on_function(self, n: fx.Node, name: str, out):
        where = n.name
        args = list(n.args)
        x = self.d(args[0]) if args else None
        tensors = [a for a in args if isinstance(a, fx.Node) and isinstance(self.env.get(a), torch.Tensor)]
        if not isinstance(out, torch.Tensor) and name != "getitem":
            return None  # sizes, shapes and other plain values
        if name in UNARY or name.rstrip("_") in UNARY:
            return list(x)
        if name in BINARY:
            return self.binary(n, out, where)
        if name in PERMUTE:
            return self.permute(n, name, x, out)
        if name in RESHAPE:
            return self.reshape(n, x, self.val(args[0]).shape, out.shape)
        if name in POOL:
            return [x[0], x[1]] + [None] * (out.dim() - 2)
        if name in REDUCE:
            return self.reduce(n, x, self.val(args[0]).dim(), out)
        if name == "layer_norm":
            shape = args[1] if len(args) > 1 else n.kwargs["normalized_shape"]
            weight = args[2] if len(args) > 2 else n.kwargs.get("weight")
            bias = args[3] if len(args) > 3 else n.kwargs.get("bias")
            return self.layer_norm(n, x, len(shape) if isinstance(shape, (tuple, list)) else 1, where, weight is not None, weight=weight, bias=bias)
        if name == "cat":
            return self.cat(n, out, where)
        if name == "getitem":
            return self.getitem(n, out)
        self.freeze_all([self.d(a) for a in tensors], f"unsupported op {name}")
        return self.fresh(out, f"unsupported op {name}")

    def binary(self, n, out, where):
        operands = [(self.d(a), self.val(a)) for a in n.args if isinstance(a, fx.Node) and isinstance(self.val(a), torch.Tensor)]
        result: list[Ref | None] = [None] * out.dim()
        for axis in range(1, out.dim() + 1):
            refs = []
            for dsc, value in operands:
                if value.dim() >= axis and value.shape[-axis] > 1:
                    refs.append(dsc[-axis])
            if out.shape[-axis] <= 1 or not refs:
                continue
            acc = refs[0]
            for r in refs[1:]:
                acc = self.unify(acc, r, where)
            result[-axis] = acc
        return result

    def permute(self, n, name, x, out):
        args = [self.val(a) for a in n.args[1:]]
        order = list(range(len(x)))
        if name == "permute":
            order = list(args[0]) if len(args) == 1 and isinstance(args[0], (tuple, list)) else list(args)
        else:
            a, b = (d % len(x) for d in args[:2])
            if name == "movedim":
                order.insert(b, order.pop(a))
            else:
                order[a], order[b] = order[b], order[a]
        result = [x[i % len(x)] for i in order]
        if n.args[0] in self.writer_node:
            self.writer_node[n] = self.writer_node[n.args[0]]
        return result

    def reshape(self, n, x, before, after):
        """Match runs of merged or split axes; a run merging several axes keeps at most one element."""
        before, after = list(before), list(after)
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
            if not refs:
                result += [None] * len(run_out)
            elif len(refs) == 1 and len(sizes) == 1:
                k, ref = refs[0]
                outer = math.prod(before[m] for m in run_in if m < k) * ref.outer
                inner = math.prod(before[m] for m in run_in if m > k) * ref.inner
                result += [Ref(ref.el, outer, inner) if after[m] > 1 else None for m in run_out]
            else:
                self.freeze_all([[r for _, r in refs]], f"reshape splitting or merging channel axes at {n.name}")
                result += [None] * len(run_out)
        result += [None] * (len(after) - len(result))
        if n.args and n.args[0] in self.writer_node and len(after) == len(before):
            self.writer_node[n] = self.writer_node[n.args[0]]
        return result

    def reduce(self, n, x, ndim, out):
        dims = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim")
        if dims is None:
            return [None] * out.dim()
        dims = [d % ndim for d in (dims if isinstance(dims, (tuple, list)) else [dims])]
        keep = n.kwargs.get("keepdim", n.args[2] if len(n.args) > 2 and isinstance(n.args[2], bool) else False)
        return [None if k in dims else r for k, r in enumerate(x) if keep or k not in dims]

    def cat(self, n, out, where):
        parts = n.args[0]
        dim = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim", 0)
        descs = [self.d(p) for p in parts]
        dim %= out.dim()
        result: list[Ref | None] = [None] * out.dim()
        for axis in range(out.dim()):
            refs = [dsc[axis] for dsc in descs if dsc is not None]
            if axis == dim:
                for r in refs:
                    if r is not None:
                        self.els.freeze(r.el, "concatenation")
            elif refs:
                acc = refs[0]
                for r in refs[1:]:
                    acc = self.unify(acc, r, where)
                result[axis] = acc
        return result

    def getitem(self, n, out):
        source, index = n.args
        dsc = self.d(source)
        if isinstance(dsc, tuple) and isinstance(index, int):
            return dsc[index]
        if not isinstance(out, torch.Tensor) or dsc is None:
            return None
        self.freeze_all([dsc], "indexing a tensor")
        return self.fresh(out, "indexing a tensor")


def _refs(dsc):
    if isinstance(dsc, tuple):
        for d in dsc:
            yield from _refs(d)
    elif isinstance(dsc, list):
        yield from (r for r in dsc if r is not None)


def _flat_descs(tracer, args) -> list:
    found: list = []
    fx.node.map_arg(args, lambda node: found.append(tracer.d(node)))
    return found


def derive_spec(model: nn.Module, example_inputs) -> AlignmentSpec:
    """The alignment spec of `model`, traced with torch.fx on `example_inputs` (a tensor or a tuple).

    Returns an AlignmentSpec whose `coverage` says how many hidden units are permutable and what
    froze the rest. Raises TraceError when the model cannot be traced at all.
    """
    inputs = example_inputs if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    try:
        gm = fx.symbolic_trace(model)
    except Exception as exc:  # fx raises many types for control flow on tensors
        raise TraceError(f"{type(model).__name__} cannot be traced by torch.fx ({type(exc).__name__}: {str(exc).splitlines()[0]}); "
                         "avoid Python control flow on tensor values in forward(), or write its alignment spec by hand") from exc
    tracer = AxisTracer(gm, model)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            tracer.run(*inputs)
    except Exception as exc:
        raise TraceError(f"running {type(model).__name__} on the example inputs failed ({type(exc).__name__}: {str(exc).splitlines()[0]}); "
                         "give example inputs of the shape the model expects") from exc
    finally:
        model.train(was_training)
    freeze_tied(model, tracer)
    return build(model, tracer)


def freeze_tied(model: nn.Module, tracer: AxisTracer) -> None:
    owners: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        owners.setdefault(id(p), []).append(name)
    for names in owners.values():
        if len(names) > 1:
            for name in names:
                for ref in tracer.links.get(name, []):
                    if ref is not None:
                        tracer.els.freeze(ref.el, f"tied weights {' = '.join(names)}")


def build(model: nn.Module, tracer: AxisTracer) -> AlignmentSpec:
    els = tracer.els
    roots = list(dict.fromkeys(els.find(e) for e in els.opened))
    live = [r for r in roots if not els.frozen(r)]
    names: dict[int, str] = {}
    for r in live:
        base = els.writers[r][0] if els.writers[r] else f"group{r}"
        names[r] = base if base not in names.values() else f"{base}#{r}"
    state = model.state_dict()
    axes: dict[str, tuple[Axis | None, ...]] = {}
    for key, value in state.items():
        links = tracer.links.get(key, [None] * value.dim())
        row = []
        for dim, ref in enumerate(links):
            root = els.find(ref.el) if ref is not None else None
            ok = root in names and value.shape[dim] == ref.outer * els.size[root] * ref.inner
            row.append(Axis(names[root], ref.outer, ref.inner) if ok else None)
        axes[key] = tuple(row)
    units = {}
    for e, entries in tracer.units.items():
        root = els.find(e)
        if root in names:
            units.setdefault(names[root], []).extend(Unit(w, nrm) for w, nrm in entries)
    coverage = Coverage()
    for r in roots:
        if not els.frozen(r):
            coverage.permutable += els.size[r]
            coverage.hidden += els.size[r]
            continue
        reasons = [x for x in els.reasons[r] if x != "model output"]
        if reasons:
            coverage.hidden += els.size[r]
            coverage.frozen.setdefault(reasons[0], []).extend(els.writers[r])
    return AlignmentSpec(tuple(names[r] for r in live), axes, {g: tuple(u) for g, u in units.items()}, coverage)


__all__ = ["Coverage", "TraceError", "derive_spec"]
