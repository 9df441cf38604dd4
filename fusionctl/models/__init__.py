"""Model registry: each entry builds a network and declares its alignment spec."""

from __future__ import annotations

import copy
import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from fusionctl.config import ModelConfig
from fusionctl.errors import FusionctlError
from fusionctl.models.cnn import (
    RESNET18,
    RESNET20,
    VGG11,
    ResNet,
    resnet_sizes,
    resnet_spec,
    vgg11_spec,
)
from fusionctl.models.external import TimmNet, TorchvisionNet, custom_model, custom_spec, example_input
from fusionctl.models.mlp import MLP, mlp_spec
from fusionctl.models.recurrent import RecurrentClassifier, recurrent_spec
from fusionctl.models.spec import AlignmentSpec, Axis, Unit
from fusionctl.models.trace import TraceError, derive_spec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelEntry:
    build: Callable[[ModelConfig, tuple, int, int], nn.Module]  # (cfg, input_shape, num_classes, vocab) -> module
    spec: Callable[[ModelConfig], AlignmentSpec] | None  # None: traced from the built module (trace.py)
    # model.widths -> size of every group; by default the i-th width is the i-th group's size
    sizes: Callable[[ModelConfig], dict[str, int]] | None = None
    widths: Callable[[dict[str, int]], list[int]] | None = None  # the inverse: group sizes -> model.widths
    inputs: str = "dense"  # what it reads: dense (any shape, flattened) | image (C, H, W) | sequence (steps, features or token ids) | any
    tiny: dict | None = None  # a small instance (ModelConfig fields), for tests and quick runs


def _recurrent(kind: str) -> ModelEntry:
    return ModelEntry(
        lambda c, shape, k, vocab: RecurrentClassifier(kind, shape, k, c.widths, c.bias, vocab, c.embed),
        lambda c: recurrent_spec(kind, c.widths, c.bias, c.embed),
        lambda c: ({"emb": c.embed} if c.embed else {}) | {f"h{i + 1}": int(w) for i, w in enumerate(c.widths)},
        lambda sizes: [sizes[f"h{i + 1}"] for i in range(len(sizes) - ("emb" in sizes))],
        inputs="sequence", tiny={"widths": [9], "bias": True},
    )


def _resnet(blocks: list[int], tiny: list[int]) -> ModelEntry:
    return ModelEntry(
        lambda c, shape, k, vocab: ResNet(blocks, shape, k, c.widths, c.bias, c.batch_norm),
        lambda c: resnet_spec(blocks, c.bias, c.batch_norm),
        lambda c: resnet_sizes(blocks, c.widths),
        lambda sizes: [sizes[f"s{s + 1}"] for s in range(len(blocks))],
        inputs="image", tiny={"widths": tiny, "batch_norm": True},
    )


REGISTRY: dict[str, ModelEntry] = {
    "mlp": ModelEntry(lambda c, shape, k, vocab: MLP(shape, k, c.widths, c.bias), lambda c: mlp_spec(c.widths, c.bias),
                      tiny={"widths": [10, 8, 7], "bias": True}),
    "rnn": _recurrent("rnn"),
    "lstm": _recurrent("lstm"),
    "gru": _recurrent("gru"),
    "vgg11": ModelEntry(lambda c, shape, k, vocab: VGG11(shape, k, c.widths, c.bias, c.batch_norm), lambda c: vgg11_spec(c.widths, c.bias, c.batch_norm),
                        inputs="image", tiny={"widths": [6, 6, 8, 8, 8, 8, 8, 8, 6, 6], "bias": True, "batch_norm": True}),
    "resnet18": _resnet(RESNET18, [4, 6, 8, 10]),
    "resnet20": _resnet(RESNET20, [6, 8, 10]),
    "torchvision": ModelEntry(lambda c, shape, k, vocab: TorchvisionNet(c.arch, shape, k, c.kwargs), None, inputs="image",
                              tiny={"arch": "mobilenet_v3_small"}),
    "timm": ModelEntry(lambda c, shape, k, vocab: TimmNet(c.arch, shape, k, c.kwargs), None, inputs="image"),
    "custom": ModelEntry(lambda c, shape, k, vocab: custom_model(c.target, shape, k, c.kwargs), None, inputs="any"),
}
TRACED = tuple(name for name, e in REGISTRY.items() if e.spec is None)
IMAGE_MODELS = tuple(name for name, e in REGISTRY.items() if e.inputs == "image")
RECURRENT_MODELS = tuple(name for name, e in REGISTRY.items() if e.inputs == "sequence")


def tiny_config(name: str) -> ModelConfig | None:
    """A small instance of registry entry `name` (None where it has none, like model=custom)."""
    tiny = entry(name).tiny
    return None if tiny is None else ModelConfig(name, **tiny)


def entry(name: str) -> ModelEntry:
    if name not in REGISTRY:
        raise FusionctlError(f"unknown model '{name}'; choose from: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def _checked(cfg: ModelConfig) -> ModelConfig:
    if cfg.name in TRACED:
        if cfg.name == "torchvision" and not cfg.arch:
            raise FusionctlError("model=torchvision needs model.arch, a torchvision classifier such as resnet18 or mobilenet_v3_small")
        if cfg.name == "timm" and not cfg.arch:
            raise FusionctlError("model=timm needs model.arch, a timm model such as resnet18 or efficientnet_b0")
        if cfg.name == "custom" and not cfg.target:
            raise FusionctlError("model=custom needs model.target, the import path of your nn.Module class, e.g. mypkg.nets.MyNet")
        return cfg
    if not cfg.widths or any(int(w) < 1 for w in cfg.widths):
        raise FusionctlError(f"model.widths must be a non-empty list of positive integers, got {list(cfg.widths)}")
    return cfg


def build_model(cfg: ModelConfig, input_shape, num_classes: int, vocab: int = 0) -> nn.Module:
    """vocab > 0: inputs are token ids over that many tokens (a text dataset)."""
    if cfg.name in IMAGE_MODELS and len(input_shape) != 3:
        raise FusionctlError(f"model {cfg.name} needs images (C, H, W), the dataset gives shape {tuple(input_shape)}; use an image dataset")
    if vocab and entry(cfg.name).inputs not in ("sequence", "any"):
        raise FusionctlError(f"the dataset is text (token ids) and model {cfg.name} reads dense inputs; use model=rnn, lstm or gru with model.embed=64")
    if vocab and cfg.name in RECURRENT_MODELS and cfg.embed < 1:
        raise FusionctlError("the dataset is text (token ids); set model.embed to the embedding size, e.g. model.embed=64")
    if cfg.embed and not vocab:
        raise FusionctlError(f"model.embed={cfg.embed} embeds token ids but the dataset gives dense inputs; set model.embed=0 or use a text dataset")
    try:
        return entry(cfg.name).build(_checked(cfg), tuple(input_shape), num_classes, vocab)
    except ValueError as exc:
        what = "model.widths does not fit" if cfg.name not in TRACED else "cannot build"
        raise FusionctlError(f"{what} {describe(cfg)}: {exc}") from exc
    except TypeError as exc:  # a constructor rejecting model.kwargs
        raise FusionctlError(f"cannot build {describe(cfg)}: {exc}; check model.kwargs") from exc


def describe(cfg: ModelConfig) -> str:
    return {"torchvision": f"torchvision {cfg.arch}", "timm": f"timm {cfg.arch}", "custom": cfg.target}.get(cfg.name, cfg.name)


def architecture(cfg: ModelConfig) -> str:
    """A model as titles name it: a built-in with its widths; a traced model (whose widths are its own,
    not model.widths) by what it is."""
    return describe(cfg) if cfg.name in TRACED else f"{cfg.name} {cfg.widths}"


def model_spec(cfg: ModelConfig, input_shape: tuple | None = None, num_classes: int = 2, vocab: int = 0) -> AlignmentSpec:
    """The alignment spec of `cfg`: written by hand for the built-ins (and by the user with
    model.spec), traced otherwise; both of the latter need the dataset's input shape."""
    e = entry(cfg.name)
    if e.spec is not None:
        return e.spec(_checked(cfg))
    if input_shape is None:
        raise ValueError(f"tracing {describe(cfg)} needs the input shape")
    key = (repr(cfg), tuple(input_shape), num_classes, vocab)
    if key not in _TRACED_SPECS:
        model = build_model(cfg, input_shape, num_classes, vocab)
        _TRACED_SPECS[key] = _written_spec(cfg, model) if cfg.spec else _traced_spec(cfg, model, example_input(input_shape, vocab))
    return _TRACED_SPECS[key]


def _traced_spec(cfg: ModelConfig, model: nn.Module, inputs) -> AlignmentSpec:
    try:
        spec = derive_spec(model, inputs)
    except TraceError as exc:
        raise FusionctlError(str(exc)) from exc
    log.info("%s: %s", describe(cfg), spec.coverage)
    return spec


def _written_spec(cfg: ModelConfig, model: nn.Module) -> AlignmentSpec:
    """model.spec, checked against the built model (a hand-written spec is trusted for nothing else)."""
    try:
        spec = custom_spec(cfg.spec, model)
    except ValueError as exc:
        raise FusionctlError(str(exc)) from exc
    check_spec_fits(spec, model, f"model.spec={cfg.spec}", describe(cfg))
    sizes = spec.group_sizes(model.state_dict())
    log.info("%s: spec from %s, %d groups, %s hidden units", describe(cfg), cfg.spec, len(sizes), f"{sum(sizes.values()):,}")
    return spec


def check_spec_fits(spec: AlignmentSpec, model: nn.Module, label: str, subject: str, state: dict | None = None) -> None:
    """One clear line when a hand-written spec (`label`) does not fit `model` (AlignmentSpec.check_fits)."""
    try:
        spec.check_fits(model, state)
    except ValueError as exc:
        raise FusionctlError(f"{label} does not fit {subject}: {str(exc).splitlines()[0]}; "
                             "compare it with the model's state_dict() and named_modules()") from exc


_TRACED_SPECS: dict[tuple, AlignmentSpec] = {}  # a model is traced once per process


def adopt_spec(cfg: ModelConfig, input_shape: tuple, num_classes: int, vocab: int, spec: AlignmentSpec) -> AlignmentSpec:
    """From now on model_spec(cfg, ...) is `spec`: the traced one with what its self-check confirmed
    added (the experts of a mixture: fusion/spec_check.with_experts)."""
    _TRACED_SPECS[(repr(cfg), tuple(input_shape), num_classes, vocab)] = spec
    return spec


def group_sizes(cfg: ModelConfig, input_shape: tuple | None = None, num_classes: int = 2, vocab: int = 0) -> dict[str, int]:
    """Size of every node group of a model built from `cfg` (the fusion target's shape)."""
    e = entry(cfg.name)
    if e.spec is None:
        spec = model_spec(cfg, input_shape, num_classes, vocab)
        return spec.group_sizes(build_model(cfg, input_shape, num_classes, vocab).state_dict())
    if e.sizes is not None:
        return e.sizes(_checked(cfg))
    return dict(zip(e.spec(_checked(cfg)).groups, (int(w) for w in cfg.widths)))


def config_for(cfg: ModelConfig, state: dict) -> ModelConfig:
    """`cfg` with the widths that `state` actually has (a base or target of other widths)."""
    from dataclasses import replace

    e = entry(cfg.name)
    if e.spec is None:
        return cfg  # a traced model's widths are its constructor's
    sizes = e.spec(_checked(cfg)).group_sizes(state)
    widths = e.widths(sizes) if e.widths is not None else [sizes[g] for g in e.spec(cfg).groups]
    return replace(cfg, widths=widths, embed=sizes.get("emb", cfg.embed))


_TEMPLATES: dict[tuple, nn.Module] = {}  # parameterless (meta) built-ins, one per config and data shape


def build_from_state(model_cfg: ModelConfig, splits, state, device="cpu") -> nn.Module:
    """The network `model_cfg` describes for a dataset (splits: its input_shape, num_classes, vocab), holding `state`."""
    # The built-ins keep everything in their state dict, so they skip the random init: a copy of a
    # template built once on the meta device (building on it anew took longer than a real build:
    # 12 ms against 4 for resnet20; the copy and load take 2 ms for vgg11, 8 for resnet20).
    # A user's module may hold buffers outside its state dict, so it is built for real.
    if model_cfg.name in TRACED:
        model = build_model(model_cfg, splits.input_shape, splits.num_classes, splits.vocab).to(device)
    else:
        key = (repr(model_cfg), tuple(splits.input_shape), splits.num_classes, splits.vocab)
        if key not in _TEMPLATES:
            with torch.device("meta"):
                _TEMPLATES[key] = build_model(model_cfg, splits.input_shape, splits.num_classes, splits.vocab)
        model = copy.deepcopy(_TEMPLATES[key]).to_empty(device=device)
    load_state(model, state)  # copies: the caller's tensors stay untouched when the model is trained
    return model.eval()


def load_state(model: nn.Module, state: dict) -> None:
    """model.load_state_dict(state), with `model`'s own module versions when `state` is a plain dict:
    some modules' loaders read them and refuse a state without (torchvision's MNASNet)."""
    if getattr(state, "_metadata", None) is None:
        state = OrderedDict(state)
        state._metadata = getattr(model.state_dict(), "_metadata", None)  # type: ignore[attr-defined]
    model.load_state_dict(state)


def random_target_factory(model_cfg: ModelConfig, splits, seed: int):
    """A function returning the state of a freshly initialised `model_cfg` network (always the same, by `seed`)."""

    def make():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            m = build_model(model_cfg, splits.input_shape, splits.num_classes, splits.vocab)
        return {k: v.detach() for k, v in m.state_dict().items()}

    return make


__all__ = ["build_from_state", "random_target_factory", "config_for", "AlignmentSpec", "Axis", "REGISTRY", "TRACED", "Unit", "build_model", "derive_spec", "example_input", "group_sizes", "model_spec"]
