"""Fully connected ReLU network (the paper's FCModel: no bias by default)."""

from __future__ import annotations

import math

import torch
from torch import nn

from fusionctl.models.spec import AlignmentSpec, Axis, Unit


class MLP(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], num_classes: int, widths: list[int], bias: bool = False):
        super().__init__()
        dims = [math.prod(input_shape), *widths, num_classes]
        self.layers = nn.ModuleList(nn.Linear(a, b, bias=bias) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for layer in self.layers[:-1]:
            x = torch.relu(layer(x))
        return self.layers[-1](x)


def mlp_spec(widths: list[int], bias: bool) -> AlignmentSpec:
    groups = tuple(f"h{i + 1}" for i in range(len(widths)))
    axes: dict[str, tuple[Axis | None, ...]] = {}
    for i in range(len(widths) + 1):
        out = Axis(groups[i]) if i < len(groups) else None
        inp = Axis(groups[i - 1]) if i > 0 else None
        axes[f"layers.{i}.weight"] = (out, inp)
        if bias:
            axes[f"layers.{i}.bias"] = (out,)
    return AlignmentSpec(groups, axes, {g: (Unit(f"layers.{i}"),) for i, g in enumerate(groups)})
