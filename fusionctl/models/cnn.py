"""VGG11 and CIFAR-style ResNets (ResNet18, ResNet20), optionally with BatchNorm and biases.

Input channels and image size come from the dataset: max-pools that would shrink a feature
map below 1x1 are skipped, and a global average pool feeds the classifier, so 28x28 grey
images work as well as 32x32 colour ones.
"""

from __future__ import annotations

import torch
from torch import nn

from fusionctl.models.spec import AlignmentSpec, Axis, Unit

VGG11_CONVS = 8  # configuration A: 64 M 128 M 256 256 M 512 512 M 512 512 M
VGG11_POOL_AFTER = (0, 1, 3, 5, 7)


def _bn_axes(prefix: str, ax: Axis) -> dict:
    return {f"{prefix}.weight": (ax,), f"{prefix}.bias": (ax,), f"{prefix}.running_mean": (ax,),
            f"{prefix}.running_var": (ax,), f"{prefix}.num_batches_tracked": ()}


def _conv_axes(prefix: str, out: Axis, inp: Axis | None, bias: bool) -> dict:
    axes = {f"{prefix}.weight": (out, inp, None, None)}
    if bias:
        axes[f"{prefix}.bias"] = (out,)
    return axes


class VGG11(nn.Module):
    """widths = 8 conv channel counts, then the 2 hidden classifier widths (paper: fc 512)."""

    def __init__(self, input_shape, num_classes: int, widths: list[int], bias: bool = False, batch_norm: bool = False):
        super().__init__()
        if len(widths) != VGG11_CONVS + 2:
            raise ValueError(f"vgg11 takes {VGG11_CONVS + 2} widths (8 convs, 2 classifier layers), got {len(widths)}")
        chans = [input_shape[0], *widths[:VGG11_CONVS]]
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, padding=1, bias=bias) for a, b in zip(chans[:-1], chans[1:]))
        self.bns = nn.ModuleList(nn.BatchNorm2d(c) for c in chans[1:]) if batch_norm else None
        size, self.pools = input_shape[1], []
        for i in range(VGG11_CONVS):
            pool = i in VGG11_POOL_AFTER and size >= 2
            self.pools.append(pool)
            size = size // 2 if pool else size
        dims = [widths[VGG11_CONVS - 1], *widths[VGG11_CONVS:], num_classes]
        self.fcs = nn.ModuleList(nn.Linear(a, b, bias=bias) for a, b in zip(dims[:-1], dims[1:]))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if self.bns is not None:
                x = self.bns[i](x)
            x = torch.relu(x)
            if self.pools[i]:
                x = nn.functional.max_pool2d(x, 2)
        x = x.mean((2, 3))
        for fc in self.fcs[:-1]:
            x = torch.relu(fc(x))
        return self.fcs[-1](x)


def vgg11_spec(widths: list[int], bias: bool, batch_norm: bool) -> AlignmentSpec:
    groups = tuple(f"c{i + 1}" for i in range(VGG11_CONVS)) + ("f1", "f2")
    axes: dict = {}
    for i in range(VGG11_CONVS):
        out = Axis(groups[i])
        axes.update(_conv_axes(f"convs.{i}", out, Axis(groups[i - 1]) if i else None, bias))
        if batch_norm:
            axes.update(_bn_axes(f"bns.{i}", out))
    # global average pooling makes the conv -> classifier transition channel to feature
    fc_groups = [groups[VGG11_CONVS - 1], "f1", "f2", None]
    for j in range(3):
        out = Axis(fc_groups[j + 1]) if fc_groups[j + 1] else None
        axes[f"fcs.{j}.weight"] = (out, Axis(fc_groups[j]))
        if bias:
            axes[f"fcs.{j}.bias"] = (out,)
    units = {groups[i]: (Unit(f"convs.{i}", f"bns.{i}" if batch_norm else None),) for i in range(VGG11_CONVS)}
    units |= {"f1": (Unit("fcs.0"),), "f2": (Unit("fcs.1"),)}
    return AlignmentSpec(groups, axes, units)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, bias: bool, batch_norm: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=bias)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=bias)
        self.bn1 = nn.BatchNorm2d(cout) if batch_norm else nn.Identity()
        self.bn2 = nn.BatchNorm2d(cout) if batch_norm else nn.Identity()
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=bias)
            self.shortcut_bn = nn.BatchNorm2d(cout) if batch_norm else nn.Identity()

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        skip = x if self.shortcut is None else self.shortcut_bn(self.shortcut(x))
        return torch.relu(out + skip)


class ResNet(nn.Module):
    """CIFAR ResNet: 3x3 stride-1 stem, no max-pool; widths = one channel count per stage."""

    def __init__(self, blocks: list[int], input_shape, num_classes: int, widths: list[int], bias=False, batch_norm=False):
        super().__init__()
        if len(widths) != len(blocks):
            raise ValueError(f"this ResNet takes {len(blocks)} stage widths, got {len(widths)}")
        self.stem = nn.Conv2d(input_shape[0], widths[0], 3, 1, 1, bias=bias)
        self.stem_bn = nn.BatchNorm2d(widths[0]) if batch_norm else nn.Identity()
        layers, cin = [], widths[0]
        for s, (n, w) in enumerate(zip(blocks, widths)):
            for b in range(n):
                layers.append(BasicBlock(cin, w, 2 if (b == 0 and s > 0) else 1, bias, batch_norm))
                cin = w
        self.blocks = nn.ModuleList(layers)
        self.fc = nn.Linear(widths[-1], num_classes, bias=bias)
        self.stage_blocks = blocks
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = torch.relu(self.stem_bn(self.stem(x)))
        for block in self.blocks:
            x = block(x)
        return self.fc(x.mean((2, 3)))


def resnet_spec(blocks: list[int], bias: bool, batch_norm: bool) -> AlignmentSpec:
    """Every conv whose output is added into a residual stream maps its rows to that stream's group.

    Groups come in fusion order: a stage's stream is solved right after its first block's inner
    group, from the members whose inputs are known (first conv2 and the shortcut), which is the
    authors' 'pre' handling; later members are carried by the same coupling.
    """
    groups: list[str] = []
    axes: dict = {}
    units: dict[str, list[Unit]] = {}

    def conv(prefix, out, inp, bn_prefix):
        axes.update(_conv_axes(prefix, Axis(out), Axis(inp) if inp else None, bias))
        units.setdefault(out, []).append(Unit(prefix, bn_prefix if batch_norm else None))
        if batch_norm:
            axes.update(_bn_axes(bn_prefix, Axis(out)))

    stream = "s1"
    groups.append(stream)
    conv("stem", stream, None, "stem_bn")
    k = 0
    for s, n in enumerate(blocks):
        for b in range(n):
            inner = f"b{s + 1}.{b + 1}"
            groups.append(inner)
            prefix = f"blocks.{k}"
            conv(f"{prefix}.conv1", inner, stream, f"{prefix}.bn1")
            new_stream = f"s{s + 1}" if b == 0 and s > 0 else stream
            if new_stream != stream:
                groups.append(new_stream)
            conv(f"{prefix}.conv2", new_stream, inner, f"{prefix}.bn2")
            if new_stream != stream:
                conv(f"{prefix}.shortcut", new_stream, stream, f"{prefix}.shortcut_bn")
            stream = new_stream
            k += 1
    axes["fc.weight"] = (None, Axis(stream))
    if bias:
        axes["fc.bias"] = (None,)
    return AlignmentSpec(tuple(groups), axes, {g: tuple(u) for g, u in units.items()})


def resnet_sizes(blocks: list[int], widths: list[int]) -> dict[str, int]:
    sizes = {"s1": widths[0]}
    for s, (n, w) in enumerate(zip(blocks, widths)):
        sizes[f"s{s + 1}"] = w
        for b in range(n):
            sizes[f"b{s + 1}.{b + 1}"] = w
    return sizes


RESNET18 = [2, 2, 2, 2]
RESNET20 = [3, 3, 3]
