"""How the tracer (tracer.py) reads a module call: which of its parameters' axes carry which
element, and what its output carries. Mixed into AxisTracer, whose plumbing (d, link, open,
fresh, freeze_all, mark_norm, layer_norm, reshape) these handlers use."""

from __future__ import annotations

import torch
import torch.fx as fx
from torch import nn

from fusionctl.models import op_kinds as ops
from fusionctl.models.axes import pad_refs, unfold_refs, unify, window_refs
from fusionctl.models.elements import Ref
from fusionctl.models.outputs import tensors_in


FUNCTIONAL = {"batch_norm", "group_norm", "linear", "conv1d", "conv2d", "conv3d", "embedding", "addmm"}


class ModuleRules:
    def on_module(self, n: fx.Node, m: nn.Module, out, where: str | None = None):
        where = where or str(n.target)
        x = self.d(n.args[0]) if n.args else None
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)) and self.mixes_heads(m, x, where, self.val(n.args[0]).shape == out.shape):
            return list(x)
        if isinstance(m, nn.Linear):
            self.link(f"{where}.weight", 1, x[-1] if x else None, where)
            ref = self.open(m.out_features, where)
            self.link(f"{where}.weight", 0, ref, where)
            if m.bias is not None:
                self.link(f"{where}.bias", 0, ref, where)
            self.writer_node[n] = self.units[ref.el][0]
            return list(x[:-1]) + [ref]
        if isinstance(m, nn.modules.conv._ConvNd) and (m.groups == 1 or not isinstance(m, nn.modules.conv._ConvTransposeNd)):
            return self.conv(n, m, x, where, out)
        if isinstance(m, nn.MultiheadAttention):
            return self.attention(n, m, where, out)
        if isinstance(m, nn.Embedding):
            ref = self.open(m.embedding_dim, where)
            self.link(f"{where}.weight", 1, ref, where)
            self.writer_node[n] = self.units[ref.el][0]
            return [None] * (out.dim() - 1) + [ref]
        if isinstance(m, ops.BATCH_NORMS):
            for key in ("weight", "bias", "running_mean", "running_var"):
                if f"{where}.{key}" in self._dims:
                    self.link(f"{where}.{key}", 0, x[1], where)
            self.mark_norm(n, where, m.affine)
            return list(x)
        if isinstance(m, ops.LAST_AXES_NORMS):
            point = isinstance(m, nn.LayerNorm)  # an RMSNorm has no bias for REPAIR's shift
            return self.layer_norm(n, x, len(m.normalized_shape), where, m.elementwise_affine, prefix=where, point=point)
        if isinstance(m, nn.GroupNorm):
            if m.num_groups not in (1, m.num_channels):
                self.els.freeze(x[1].el, f"GroupNorm with {m.num_groups} groups") if x[1] else None
            elif m.affine:
                self.link(f"{where}.weight", 0, x[1], where)
                self.link(f"{where}.bias", 0, x[1], where)
            self.mark_norm(n, where, m.affine)
            return list(x)
        if isinstance(m, ops.PASS_MODULES):
            return list(x)
        if isinstance(m, ops.POOL_MODULES):
            return window_refs(self.els, x, ops.spatial_axes(type(m).__name__, len(x)), where)
        if isinstance(m, ops.PAD_MODULES):
            return pad_refs(self.els, x, m.padding, where)  # normalised to F.pad's (before, after) pairs
        if isinstance(m, nn.Unfold):
            return unfold_refs(self.els, x, self.val(n.args[0]).shape, out.shape, where)
        if isinstance(m, nn.Flatten):
            return self.reshape(n, x, self.val(n.args[0]).shape, out.shape)
        self.freeze_all(self.all_descs((n.args, n.kwargs)), f"unsupported module {type(m).__name__}")  # every input
        return self.fresh(out, f"unsupported module {type(m).__name__}")

    def mixes_heads(self, m: nn.Module, x, where: str, same_shape: bool) -> bool:
        """A Linear (or 1x1 conv, output shaped as its input) from H to H reading the axis of a
        group's H heads (talking heads: CaiT, EfficientFormerV2 mix the attention logits across
        heads): its output is that axis again, and its weight's two axes and its bias have one
        entry per head, moved with them."""
        conv = isinstance(m, nn.modules.conv._ConvNd)
        at = x[1] if conv and x and len(x) > 1 else (x[-1] if x else None)
        heads = self.els.heads.get(self.els.find(at.el), 0) if at is not None else 0
        size = (m.in_channels, m.out_channels) if conv else (m.in_features, m.out_features)
        if at is None or at.part != 1 or (at.outer, at.inner) != (1, 1) or size != (heads, heads) or not same_shape or \
                conv and (m.groups != 1 or any(k != 1 for k in m.kernel_size)):
            return False
        per_head = Ref(self.els.head_blocks(at.el))
        for key, dim in [("weight", 1), ("weight", 0)] + ([("bias", 0)] if m.bias is not None else []):
            self.link(f"{where}.{key}", dim, per_head, where)
        return True

    def all_descs(self, args) -> list:
        """The descriptors of every node in `args`, however nested (lists of tensors included)."""
        found: list = []
        fx.node.map_arg(args, lambda node: found.append(self.d(node)))
        return found

    def freeze_held(self, n: fx.Node, out) -> None:
        """An object holding tensors (a dataclass of logits) is not followed: what went into it stays."""
        if next(tensors_in(out), None) is not None:
            returned = all(user.op == "output" for user in n.users)
            self.freeze_all(self.all_descs((n.args, n.kwargs)), "model output" if returned else f"held by a {type(out).__name__}")

    def on_functional(self, n: fx.Node, name: str, x, out):
        """F.batch_norm, F.group_norm, F.linear, F.conv*, F.embedding called inside a module's forward
        (timm's BatchNormAct2d, Conv2dSame, Linear; Gemma's scaled embedding), and torch.addmm (HF's
        Conv1D). A parameter read only there (through casts) is linked
        as a module's own would be; a norm's follow the channel axis, but the norm is not marked
        as a unit's (its module may act after it, and REPAIR would read the wrong output). A linear
        or conv whose weight is its own module's parameter is read as that module; a linear on a
        weight the trace follows otherwise (read elsewhere too, or indexed: stacked experts) as
        x @ W.T (traced_linear); anything else freezes."""
        arg = lambda i, key: n.args[i] if len(n.args) > i else n.kwargs.get(key)  # noqa: E731
        if name in ("batch_norm", "group_norm"):
            params = [arg(i, k) for i, k in ((1, "running_mean"), (2, "running_var"), (3, "weight"), (4, "bias"))] \
                if name == "batch_norm" else [arg(2, "weight"), arg(3, "bias")]
            groups = arg(1, "num_groups") if name == "group_norm" else 1
            channels = x[1] if x is not None else None
            if channels is not None and groups not in (1, self.val(n.args[0]).shape[1]):
                self.els.freeze(channels.el, f"GroupNorm with {groups} groups")
            for p in params:
                key = self.claim(p)
                if key is not None:
                    self.link(key, 0, channels, str(n.name))
                elif isinstance(p, fx.Node) and self.d(p) is not None:
                    unify(self.els, self.d(p)[0], channels, str(n.name))
            return list(x) if x is not None else self.fresh(out, name)
        if name == "addmm":
            return self.addmm(n, out)
        weight, bias = arg(1, "weight"), (arg(2, "bias") if name != "embedding" else None)  # F.embedding's third: padding_idx
        keys = [self.claim(weight)] + ([self.claim(bias)] if bias is not None else [])
        owner, m = self.owner(keys[0])
        kind = {"linear": nn.Linear, "embedding": nn.Embedding}.get(name, nn.modules.conv._ConvNd)
        if not (isinstance(m, kind) and keys[1:] in ([], [f"{owner}.bias"]) and (bias is None) == (getattr(m, "bias", None) is None)
                and (name in ("linear", "embedding") or arg(6, "groups") in (None, m.groups))):
            if name == "linear" and (traced := self.traced_linear(n, x, weight, bias, keys)) is not None:
                return traced
            if name.startswith("conv") and (traced := self.traced_conv(n, x, weight, bias, keys, arg(6, "groups") or 1, out)) is not None:
                return traced
            reason = f"{name} with a weight computed in forward or read elsewhere"
            self.freeze_all([x, *(self.d(a) for a in (weight, bias) if isinstance(a, fx.Node))], reason)
            return self.fresh(out, reason)
        return self.on_module(n, m, out, where=owner)

    def traced_linear(self, n: fx.Node, x, weight, bias, keys: list):
        """F.linear(x, W, b) with a weight whose axes the trace follows though no module call owns it: a
        weight read a second time, a router's own, a mixture of experts' stacked weights indexed by
        expert (gate_up_proj[e]; the output is opened as a group). As in x @ W.T + b,
        W's columns carry x's last axis and its rows the output's, which b's entries follow. The
        output's units have no writer module, so they are aligned on weights only. None if W's or
        x's axes are not followed."""
        w = self.d(weight)
        if x is None or not isinstance(w, list) or len(w) != 2 or (bias is not None and not isinstance(self.d(bias), list)):
            return None
        where = str(n.name)
        unify(self.els, x[-1], w[1], where)
        if bias is not None:
            unify(self.els, self.d(bias)[0], w[0], where)
        for key, refs in zip(keys, (w, self.d(bias))):  # a parameter claimed above (a router's own weight) links here
            for dim, ref in enumerate(refs if key is not None else ()):
                self.link(key, dim, ref, where)
        if keys[0] is None and w[0] is not None and (source := self.parameter_behind(weight)):  # an expert's rows
            self.els.open_unobserved(w[0].el, source)
        return list(x[:-1]) + [w[0]]

    def traced_conv(self, n: fx.Node, x, weight, bias, keys: list, groups: int, out):
        """F.conv* on a weight no module call owns: one computed from a conv's own weight, each of
        whose channel axes still carries the weight's own (NFNet's and BiT's standardised weights),
        read as that conv; or one fixed kernel for every channel, a channel each (an anti-aliasing
        blur), which passes the channels through. None otherwise."""
        w, value = self.d(weight), self.val(weight)
        if x is None or not isinstance(w, list) or len(w) != len(x) or not isinstance(value, torch.Tensor):
            return None
        if groups == value.shape[0] == self.val(n.args[0]).shape[1] and value.shape[1] == 1 and bias is None \
                and all(r is None for r in w) and torch.equal(value, value[:1].expand_as(value)):
            return window_refs(self.els, x, len(x) - 2, str(n.name))  # the kernel mixes the spatial axes only
        source = self.parameter_behind(weight)
        owner, m = self.owner(source)
        own = self.links.get(source, [])
        if not isinstance(m, nn.modules.conv._ConvNd) or m.groups != groups or keys[1:] not in ([], [f"{owner}.bias"]) \
                or len(own) < 2 or any((r is None) != (a is None) or r is not None and self.els.find(r.el) != self.els.find(a.el)
                                       for r, a in zip(w[:2], own[:2])):
            return None
        return self.on_module(n, m, out, where=owner)

    def grouped_mm(self, args, where: str) -> list | None:
        """torch's grouped matmul of tokens sorted by expert (S, in) with stacked expert weights
        (E, in, out), Hugging Face's mixtures of experts: a matrix product per expert. The experts
        never move (the router picks them); the output axis is a group aligned on weights (no
        module outputs it). None if the shapes or axes are not these."""
        a, b = (self.d(x) for x in args[:2]) if len(args) > 1 else (None, None)
        if a is None or b is None or len(a) != 2 or len(b) != 3:
            return None
        if b[0] is not None:
            self.els.freeze(b[0].el, "the experts axis of stacked expert weights")
        unify(self.els, a[-1], b[-2], where)
        if b[-1] is not None and (source := self.parameter_behind(args[1])):
            self.els.open_unobserved(b[-1].el, source)
        return [a[0], b[-1]]

    def parameter_behind(self, node) -> str | None:
        """The state key a weight is read from through indexing, transposes and casts (gate_up_proj[e].T)."""
        while isinstance(node, fx.Node) and node.op in ("call_method", "call_function") and node.args and \
                str(getattr(node.target, "__name__", node.target)) in ops.PERMUTE | ops.RESHAPE | ops.WEIGHT_STEPS:
            node = node.args[0]
        return str(node.target) if isinstance(node, fx.Node) and node.op == "get_attr" else None

    def addmm(self, n: fx.Node, out):
        """torch.addmm(bias, x, weight) on a module's own bias and (in, out) weight: Hugging Face's Conv1D
        (GPT-2's layers), a Linear whose weight is stored transposed (op_kinds.weight_out_axis)."""
        bias, x, weight = (n.args + (None,) * 3)[:3]
        keys = [self.claim(weight), self.claim(bias)]
        owner, m = self.owner(keys[0])
        if m is None or keys[1] != f"{owner}.bias" or not ops.transposed_linear(m):
            reason = "addmm with a weight computed in forward or read elsewhere"
            self.freeze_all(self.all_descs(n.args), reason)
            return self.fresh(out, reason)
        xd = self.d(x)
        self.link(keys[0], 0, xd[-1], owner)
        ref = self.open(m.weight.shape[1], owner)
        self.link(keys[0], 1, ref, owner)
        self.link(keys[1], 0, ref, owner)
        self.writer_node[n] = self.units[ref.el][0]
        return list(xd[:-1]) + [ref]

    def channel_axes(self, key: str) -> int:
        """How many leading axes of state entry `key` may carry units: a conv's weight's kernel axes never do."""
        owner, m = self.owner(key)
        return 2 if isinstance(m, nn.modules.conv._ConvNd) else self.state_dims(key)

    def owner(self, key: str | None) -> tuple[str | None, nn.Module | None]:
        """The module whose `weight` the state key `key` is, and its name; (None, None) otherwise."""
        if key is None or not key.endswith(".weight"):
            return None, None
        name = key.rsplit(".", 1)[0]
        return name, self.original.get_submodule(name)

    def claim(self, node) -> str | None:
        """The state key of a parameter that `node` reads and nothing else has (through casts), its
        get_attr links dropped so the caller links it; else None."""
        while isinstance(node, fx.Node) and len(node.users) == 1 and node.op in ("call_method", "call_function") and node.args and \
                str(getattr(node.target, "__name__", node.target)) in ("to", "type", "float", "half", "contiguous", "type_as"):
            node = node.args[0]
        key = str(node.target) if isinstance(node, fx.Node) and node.op == "get_attr" else None
        if key not in self._dims or len(node.users) != 1 or self.linked_at.get(key, {key}) != {key}:
            return None  # read elsewhere too (a module call, another op): unified with those reads instead
        self.links.pop(key, None)
        self.linked_at.pop(key, None)
        return key

    def conv(self, n, m, x, where, out):
        x = window_refs(self.els, x, len(x) - 2, where)  # the kernel mixes the spatial axes
        cin = x[1]
        out_dim = ops.weight_out_axis(m)
        if m.groups == 1:
            self.link(f"{where}.weight", 1 - out_dim, cin, where)
            ref = self.open(m.out_channels, where)
        elif m.groups == m.in_channels and cin is not None and (cin.outer, cin.inner) == (1, 1):
            # depthwise: output channel c*k + j reads input channel c only, so it stays in c's group
            ref = Ref(cin.el, 1, m.out_channels // m.in_channels)
            self.units.setdefault(cin.el, []).append([where, None])
        elif m.in_channels == m.out_channels and cin is not None and (cin.outer, cin.inner, cin.part) == (1, 1, 0):
            # grouped: output block b reads input block b only, so inputs and outputs share one group
            # that moves in whole blocks, and within each block as its block-local weight axis follows
            ref = cin
            self.els.set_heads(cin.el, m.groups, where)
            self.units.setdefault(cin.el, []).append([where, None])
            self.grouped[f"{where}.weight"] = (1, cin.el)
        else:
            self.freeze_all([x], f"grouped conv (groups={m.groups}) with {m.in_channels} inputs, {m.out_channels} outputs")
            return self.fresh(out, f"grouped conv (groups={m.groups}) with {m.in_channels} inputs, {m.out_channels} outputs")
        self.link(f"{where}.weight", out_dim, ref, where)
        if m.bias is not None:
            self.link(f"{where}.bias", 0, ref, where)
        self.writer_node[n] = self.units[ref.el][-1]
        return [x[0], ref] + [None] * (len(x) - 2)

    def attention(self, n, m: nn.MultiheadAttention, where: str, out):
        """nn.MultiheadAttention: the input projections read the channels (embed axis, last) of query,
        key and value; their rows (q, k and v of each head) and out_proj's columns form one group
        that moves in whole heads (spec.heads), observed through those projections; out_proj
        writes a new group."""
        q, k, v = (self.d(n.args[i]) if len(n.args) > i else self.d(n.kwargs.get(name)) for i, name in enumerate(("query", "key", "value")))
        keys = [f"{where}.in_proj_weight"] * 3 if m._qkv_same_embed_dim else [f"{where}.{p}_proj_weight" for p in "qkv"]
        for key, x in zip(keys, (q, k, v)):
            self.link(key, 1, x[-1] if x else None, where)
        heads = self.els.new(m.embed_dim, f"{where}.heads")
        self.els.set_heads(heads, m.num_heads, where)
        self.attention_blocks[heads] = where
        for key in dict.fromkeys(keys):
            self.link(key, 0, Ref(heads, 3 if m._qkv_same_embed_dim else 1), where)
        if m.in_proj_bias is not None:
            self.link(f"{where}.in_proj_bias", 0, Ref(heads, 3), where)
        self.link(f"{where}.out_proj.weight", 1, Ref(heads), where)
        if m.bias_k is not None:
            self.els.freeze(heads, "attention with add_bias_kv")
        ref = self.open(m.embed_dim, where)
        self.link(f"{where}.out_proj.weight", 0, ref, where)
        if m.out_proj.bias is not None:
            self.link(f"{where}.out_proj.bias", 0, ref, where)
        weights = out[1]
        return (list(q[:-1]) + [ref], [None] * weights.dim() if isinstance(weights, torch.Tensor) else None)
