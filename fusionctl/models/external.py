"""Networks fusionctl did not write: any torchvision or timm classifier, or a user's own class by import path.

All are aligned through a traced spec (trace.py). Classes and input channels come from the
dataset: a torchvision net's first convolution is rebuilt for the dataset's channels (timm takes
them as in_chans), and images smaller than MIN_SIDE are resized up on the way in (the ImageNet
nets' strides would shrink them to nothing). A custom class (importable from the folder fusionctl
runs in, or installed) receives `model.kwargs`, plus `num_classes`, `in_channels` and
`input_shape` when its constructor takes them.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys

import torch
import torch.nn.functional as F
from torch import nn

from fusionctl.models.spec import AlignmentSpec

MIN_SIDE = 32


class ImageNetStyle(nn.Module):
    """An ImageNet classifier (`net`) for (C, H, W) inputs of any size: smaller images are resized up on the way in."""

    def __init__(self, input_shape: tuple):
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(f"these models read images (C, H, W), the dataset gives shape {tuple(input_shape)}")
        small = min(input_shape[1:]) < MIN_SIDE
        self.size = [max(MIN_SIDE, s) for s in input_shape[1:]] if small else None

    def forward(self, x):
        if self.size is not None:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        return self.net(x)


class TorchvisionNet(ImageNetStyle):
    """A torchvision classifier for (C, H, W) inputs of any channel count and size."""

    def __init__(self, arch: str, input_shape: tuple, num_classes: int, kwargs: dict | None = None):
        super().__init__(input_shape)
        import torchvision

        if arch not in torchvision.models.list_models(module=torchvision.models):
            raise ValueError(f"torchvision has no classification model '{arch}'; see torchvision.models.list_models()")
        self.net = torchvision.models.get_model(arch, weights=None, num_classes=num_classes, **(kwargs or {}))
        if input_shape[0] != 3:
            _rebuild_first_conv(self.net, input_shape[0])


class TimmNet(ImageNetStyle):
    """A timm classifier (random init; timm is optional: pip install timm) for (C, H, W) inputs of any channel count and size."""

    def __init__(self, arch: str, input_shape: tuple, num_classes: int, kwargs: dict | None = None):
        super().__init__(input_shape)
        try:
            import timm
        except ImportError as exc:
            raise ValueError("model=timm needs the timm package: .venv/bin/pip install timm (or pip install 'fusionctl[timm]')") from exc
        if not timm.is_model(arch):
            raise ValueError(f"timm has no model '{arch}'; see timm.list_models()")
        self.net = timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=input_shape[0], **(kwargs or {}))


def _rebuild_first_conv(net: nn.Module, channels: int) -> None:
    for name, module in net.named_modules():
        if isinstance(module, nn.Conv2d):
            if module.groups != 1:
                raise ValueError(f"the first convolution {name} is grouped; cannot adapt it to {channels} input channels")
            new = nn.Conv2d(channels, module.out_channels, module.kernel_size, module.stride, module.padding, module.dilation,
                            1, module.bias is not None, module.padding_mode)
            parent = net.get_submodule(name.rsplit(".", 1)[0]) if "." in name else net
            setattr(parent, name.rsplit(".", 1)[-1], new)
            return
    raise ValueError("no convolution found to adapt to the dataset's input channels")


def imported(path: str, setting: str):
    """The object at import path `pkg.module.name`, looked up from the folder fusionctl runs in too."""
    if "." not in path:
        raise ValueError(f"{setting} must be an import path like mypackage.nets.MyNet, got '{path}'")
    module_name, attr = path.rsplit(".", 1)
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())  # as `python -m` would: the folder fusionctl runs in holds the user's code
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot import {setting}={path} ({exc}); run fusionctl where its package is, or install it (pip install -e)") from exc


def custom_model(target: str, input_shape: tuple, num_classes: int, kwargs: dict | None = None) -> nn.Module:
    """`pkg.module.Class` (or a factory function) called with model.kwargs and the dataset's sizes it asks for."""
    factory = imported(target, "model.target")
    given = dict(kwargs or {})
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}
    offered = {"num_classes": num_classes, "in_channels": input_shape[0], "input_shape": tuple(input_shape)}
    for key, value in offered.items():
        if key in params and key not in given:
            given[key] = value
    model = factory(**given)
    if not isinstance(model, nn.Module):
        raise ValueError(f"{target}(...) returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def custom_spec(path: str, model: nn.Module) -> AlignmentSpec:
    """model.spec: `pkg.module.function` returning the AlignmentSpec of `model` (called with it when
    it takes an argument), for a model torch.fx cannot trace."""
    make = imported(path, "model.spec")
    try:
        takes_model = bool(inspect.signature(make).parameters)
    except (TypeError, ValueError):
        takes_model = True
    spec = make(model) if takes_model else make()
    if not isinstance(spec, AlignmentSpec):
        raise ValueError(f"{path}(...) returned a value of type {type(spec).__name__}, not a fusionctl.AlignmentSpec")
    return spec


def example_input(input_shape: tuple, vocab: int = 0, batch: int = 2) -> torch.Tensor:
    """A batch to trace with: token ids for text, zeros-and-noise images otherwise."""
    if vocab:
        return torch.randint(0, vocab, (batch, *input_shape))
    return torch.randn(batch, *input_shape, generator=torch.Generator().manual_seed(0))
