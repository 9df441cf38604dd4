"""torch.fx tracing specialised to the example input's shapes.

Plain fx tracing fails on Python control flow that reads a tensor's shape (timm's same padding,
window partitions, position-embedding resizes), and torch.fx.wrap hides whole functions from it
(torchvision's Swin attention). This tracer runs the model alongside the trace on the example
inputs, so a tensor's shape, size(), dim(), dtype and len() are plain Python values and such code
runs as it would on those inputs; the graph is the model's computation on inputs of that shape,
which is what a spec describes. Control flow on tensor *values* still fails, as in plain fx.
"""

from __future__ import annotations

import operator
from contextlib import contextmanager

import torch
from torch import fx, nn
from torch.fx import _symbolic_trace

from fusionctl.errors import first_line
from fusionctl.models.plain_forwards import PlainTracer, fixed_defaults, named_forward

FACTS = {"shape", "dtype", "device", "ndim", "is_cuda", "requires_grad", "layout"}  # metadata, not values
QUERIES = {"size", "dim", "numel", "nelement", "ndimension", "is_floating_point", "is_complex", "element_size", "get_device",
           "is_contiguous"}


class RunError(RuntimeError):
    """The model failed on the example inputs while being traced (wrong input shape, say)."""


class ConcreteProxy(fx.Proxy):
    """A proxy that answers questions about its tensor's shape with the example's values."""

    def _value(self):
        return self.tracer.values.get(self.node)

    def __getattr__(self, k: str):
        value = self._value()
        if isinstance(value, torch.Tensor) and (k in FACTS or k in QUERIES):
            return getattr(value, k)
        return super().__getattr__(k)

    def __len__(self) -> int:
        return len(self._value())

    def __iter__(self):
        return iter([self[i] for i in range(len(self))])

    def __setitem__(self, key, value) -> None:  # an in-place write (Swin's shifted-window mask), recorded and run
        self.tracer.create_proxy("call_function", operator.setitem, (self, key, value), {})


class ConcreteTracer(PlainTracer):
    def __init__(self, inputs):
        super().__init__()
        self.inputs = list(inputs)
        self.values: dict[fx.Node, object] = {}
        self.placeholders = 0
        self.running = False  # while a node runs, modules and parameters are what they are (fx patches both while tracing)

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return ConcreteProxy(node, self)

    def call_module(self, m, forward, args, kwargs):
        return forward(*args, **kwargs) if self.running else super().call_module(m, forward, args, kwargs)

    def getattr(self, attr, attr_val, parameter_proxy_cache):
        return attr_val if self.running else super().getattr(attr, attr_val, parameter_proxy_cache)

    def create_node(self, kind, target, args, kwargs, name=None, type_expr=None) -> fx.Node:
        node = super().create_node(kind, target, args, kwargs, name, type_expr)
        self.running = True
        try:
            self.values[node] = self.evaluate(node)
        except Exception as exc:
            raise RunError(first_line(exc)) from exc
        finally:
            self.running = False
        return node

    def evaluate(self, node: fx.Node):
        if node.op == "placeholder":
            self.placeholders += 1
            k = self.placeholders - 1
            return self.inputs[k] if k < len(self.inputs) else (node.args[0] if node.args else None)
        if node.op == "output":
            return None
        args, kwargs = fx.node.map_arg((node.args, node.kwargs), self.values.__getitem__)
        if node.op == "get_attr":
            value = self.root
            for part in str(node.target).split("."):
                value = getattr(value, part)
            return value
        if node.op == "call_module":
            return self.root.get_submodule(str(node.target))(*args, **kwargs)
        if node.op == "call_method":
            return getattr(args[0], node.target)(*args[1:], **kwargs)
        return node.target(*args, **kwargs)


@contextmanager
def entering_wrapped_functions():
    """torch.fx.wrap'd functions of other libraries (torchvision's Swin attention) traced through,
    torch's own kept as calls. Reads torch.fx's private registry; without it, nothing changes."""
    registry = getattr(_symbolic_trace, "_wrapped_fns_to_patch", None)
    if not isinstance(registry, dict):
        yield
        return
    saved = dict(registry)
    for key, frame in saved.items():
        if not str(frame.get("__name__", "")).startswith("torch."):
            del registry[key]
    try:
        yield
    finally:
        registry.clear()
        registry.update(saved)


def wrapped_calls(gm: fx.GraphModule) -> list[str]:
    """Functions of other libraries that plain tracing kept as single calls (torch.fx.wrap)."""
    return [n.target.__name__ for n in gm.graph.nodes if n.op == "call_function" and callable(n.target) and
            str(getattr(n.target, "__module__", "") or "").split(".")[0] not in ("torch", "_operator", "operator", "math", "builtins", "")]


def concrete_trace(model: nn.Module, inputs) -> fx.GraphModule:
    tracer = ConcreteTracer(inputs)
    with torch.no_grad(), entering_wrapped_functions(), named_forward(model):
        graph = tracer.trace(model, concrete_args=fixed_defaults(model, len(tracer.inputs)) or None)
    return fx.GraphModule(tracer.root, graph, type(model).__name__)
