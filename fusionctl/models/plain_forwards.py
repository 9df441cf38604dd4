"""torch.fx tracing through torch.nn's transformer blocks.

torch.fx keeps every torch.nn module a leaf, and nn.Transformer, its encoder and decoder stacks
and its encoder layer cannot be traced through anyway: their forward() chooses a fused fast path
or checks shapes by Python tests on tensors. Traced here instead is the plain math of their own
slow path (the same function; a decoder layer's forward is plain already), made of the submodules
they own — attention, Linears, LayerNorms — so the tracer's rules apply to each
and the spec names their real parameters. At run time torch leaves the fast path by itself
whenever hooks watch a submodule (activation probes, REPAIR), so those see every call.
"""

from __future__ import annotations

import contextlib
import inspect

from torch import fx, nn


def _encoder_layer(m: nn.TransformerEncoderLayer, src, src_mask=None, src_key_padding_mask=None, is_causal=False):
    x = src
    if m.norm_first:
        x = x + m._sa_block(m.norm1(x), src_mask, src_key_padding_mask, is_causal=is_causal)
        return x + m._ff_block(m.norm2(x))
    x = m.norm1(x + m._sa_block(x, src_mask, src_key_padding_mask, is_causal=is_causal))
    return m.norm2(x + m._ff_block(x))


def _encoder(m: nn.TransformerEncoder, src, mask=None, src_key_padding_mask=None, is_causal=None):
    x = src
    for layer in m.layers:
        x = layer(x, src_mask=mask, src_key_padding_mask=src_key_padding_mask, is_causal=bool(is_causal))
    return m.norm(x) if m.norm is not None else x


def _decoder(m: nn.TransformerDecoder, tgt, memory, tgt_mask=None, memory_mask=None, tgt_key_padding_mask=None,
             memory_key_padding_mask=None, tgt_is_causal=None, memory_is_causal=False):
    x = tgt
    for layer in m.layers:
        x = layer(x, memory, tgt_mask=tgt_mask, memory_mask=memory_mask, tgt_key_padding_mask=tgt_key_padding_mask,
                  memory_key_padding_mask=memory_key_padding_mask, tgt_is_causal=bool(tgt_is_causal), memory_is_causal=memory_is_causal)
    return m.norm(x) if m.norm is not None else x


def _transformer(m: nn.Transformer, src, tgt, src_mask=None, tgt_mask=None, memory_mask=None, src_key_padding_mask=None,
                 tgt_key_padding_mask=None, memory_key_padding_mask=None, src_is_causal=None, tgt_is_causal=None, memory_is_causal=False):
    memory = m.encoder(src, mask=src_mask, src_key_padding_mask=src_key_padding_mask, is_causal=src_is_causal)
    return m.decoder(tgt, memory, tgt_mask=tgt_mask, memory_mask=memory_mask, tgt_key_padding_mask=tgt_key_padding_mask,
                     memory_key_padding_mask=memory_key_padding_mask, tgt_is_causal=tgt_is_causal, memory_is_causal=memory_is_causal)


PLAIN = {nn.TransformerEncoderLayer: _encoder_layer, nn.TransformerEncoder: _encoder, nn.TransformerDecoder: _decoder,
         nn.Transformer: _transformer, nn.TransformerDecoderLayer: lambda m, *args, **kwargs: type(m).forward(m, *args, **kwargs)}


class PlainTracer(fx.Tracer):
    """fx's tracer, but the blocks in PLAIN are traced through their plain forward."""

    def call_module(self, m: nn.Module, forward, args, kwargs):
        plain = PLAIN.get(type(m))
        if plain is not None:
            return plain(m, *args, **kwargs)
        if not self.installed(m) and next(iter(m.state_dict()), None) is None:
            return forward(*args, **kwargs)  # made on the fly, holding no state (a kernel wrapper around a function): traced through
        return super().call_module(m, forward, args, kwargs)

    def installed(self, m: nn.Module) -> bool:
        try:
            self.path_of_module(m)
        except NameError:
            return False
        return True


def fixed_defaults(model: nn.Module, given: int) -> dict:
    """forward()'s parameters after the `given` example inputs whose defaults are plain values
    (None, a flag): traced at those values, so `if mask is not None:` takes the branch the model
    runs (timm's Hiera), instead of meeting a placeholder that fx makes of every parameter."""
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    try:
        rest = list(inspect.signature(model.forward).parameters.values())[given:]
    except (TypeError, ValueError):  # a forward without a Python signature: fx traces it as it can
        return {}
    return {p.name: p.default for p in rest if p.kind in named and isinstance(p.default, (type(None), bool, int, float, str))}


@contextlib.contextmanager
def named_forward(model: nn.Module):
    """A forward() wrapped by a decorator that takes (*args, **kwargs) (Hugging Face's models), or
    taking *args or **kwargs itself, is traced through a forward with only its named parameters,
    calling the original: fx reads the signature of the unwrapped function but patches the
    wrapper's code, which fails ("co_varnames is too small"), and it gives **kwargs a placeholder
    that a call unpacking it cannot take (XLM). The model's class is swapped for a subclass meanwhile."""
    cls = type(model)
    inner = inspect.unwrap(cls.forward)
    try:
        signature = list(inspect.signature(inner).parameters.values())[1:]
    except (TypeError, ValueError):  # no Python signature: fx traces it as it can
        signature = []
    packed = any(p.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD) for p in signature)
    if inner is cls.forward and not packed:
        yield
        return
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    params = [p for p in signature if p.kind in kinds]
    names = [p.name for p in params]
    scope = {"decorated": cls.forward}
    exec(f"def forward(self, {', '.join(names)}):\n    return decorated(self, {', '.join(f'{n}={n}' for n in names)})", scope)  # noqa: S102
    forward = scope["forward"]
    defaults = [p.default for p in params if p.default is not inspect.Parameter.empty]
    forward.__defaults__ = tuple(defaults) or None
    model.__class__ = type(cls.__name__, (cls,), {"forward": forward, "__module__": cls.__module__})
    try:
        yield
    finally:
        model.__class__ = cls


def symbolic_trace(model: nn.Module, given: int) -> fx.GraphModule:
    tracer = PlainTracer()
    with named_forward(model):
        graph = tracer.trace(model, concrete_args=fixed_defaults(model, given) or None)
    return fx.GraphModule(tracer.root, graph, type(model).__name__)
