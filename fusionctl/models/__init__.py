"""Model registry: each entry builds a network and declares its alignment spec."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from fusionctl.errors import FusionctlError
from fusionctl.models.mlp import MLP, mlp_spec
from fusionctl.models.recurrent import factory as recurrent_factory
from fusionctl.models.spec import AlignmentSpec, Axis


@dataclass(frozen=True)
class ModelEntry:
    build: Callable[..., nn.Module]  # (input_shape, num_classes, widths, bias) -> module
    spec: Callable[[list[int], bool], AlignmentSpec]  # (widths, bias) -> spec; groups follow widths


REGISTRY: dict[str, ModelEntry] = {
    "mlp": ModelEntry(MLP, mlp_spec),
    "rnn": ModelEntry(*recurrent_factory("rnn")),
    "lstm": ModelEntry(*recurrent_factory("lstm")),
    "gru": ModelEntry(*recurrent_factory("gru")),
}


def entry(name: str) -> ModelEntry:
    if name not in REGISTRY:
        raise FusionctlError(f"unknown model '{name}'; choose from: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def build_model(name: str, input_shape, num_classes: int, widths: list[int], bias: bool) -> nn.Module:
    if not widths or any(int(w) < 1 for w in widths):
        raise FusionctlError(f"model.widths must be a non-empty list of positive integers, got {list(widths)}")
    return entry(name).build(tuple(input_shape), num_classes, [int(w) for w in widths], bias)


def model_spec(name: str, widths: list[int], bias: bool) -> AlignmentSpec:
    return entry(name).spec([int(w) for w in widths], bias)


__all__ = ["AlignmentSpec", "Axis", "REGISTRY", "build_model", "model_spec"]
