"""User-defined networks for the tests of traced specs (importable as tests.custom_nets.<Class>)."""

from __future__ import annotations

import dataclasses
import functools

import torch
import torch.nn.functional as F
from torch import nn

# torch features newer than the declared minimum (torch 2.4): the nets that use them, and their tests, need them
HAS_GROUPED_MM = hasattr(F, "grouped_mm")


def _sdpa_takes_enable_gqa() -> bool:
    q = torch.zeros(1, 2, 1, 2)
    try:
        F.scaled_dot_product_attention(q, q[:, :1], q[:, :1], enable_gqa=True)
    except TypeError:
        return False
    return True


HAS_SDPA_GQA = _sdpa_takes_enable_gqa()


class SmallNet(nn.Module):
    """conv-BN stem, one residual block, a C x H x W flatten into a Linear: the shapes a user writes."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 8, side: int = 4, head_bias: bool = True):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                                   nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width))
        self.pool = nn.AdaptiveAvgPool2d(side)
        self.head = nn.Sequential(nn.Linear(width * side * side, 32, bias=head_bias), nn.ReLU(), nn.Linear(32, num_classes))

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.block(x))
        return self.head(torch.flatten(self.pool(x), 1))


class RollNet(nn.Module):
    """Rolls its channels: no permutation of them keeps the function, so the tracer must freeze them."""

    def __init__(self, in_channels: int = 3, num_classes: int = 4):
        super().__init__()
        self.a = nn.Conv2d(in_channels, 6, 3, padding=1)
        self.b = nn.Conv2d(6, 5, 3, padding=1)
        self.fc = nn.Linear(5, num_classes)

    def forward(self, x):
        x = torch.roll(torch.relu(self.a(x)), 1, dims=1)
        return self.fc(torch.relu(self.b(x)).mean((2, 3)))


class DropPathNet(nn.Module):
    """A residual block whose branch is dropped per sample in training, as timm's DropPath does
    (`if self.training`, x.new_empty(...).bernoulli_): traced from train mode, the stream must
    still be free, since alignment reads the model's eval-mode function."""

    def __init__(self, in_channels: int = 3, num_classes: int = 4):
        super().__init__()
        self.a = nn.Conv2d(in_channels, 6, 3, padding=1)
        self.b = nn.Conv2d(6, 6, 3, padding=1)
        self.fc = nn.Linear(6, num_classes)

    def forward(self, x):
        h = torch.relu(self.a(x))
        branch = self.b(h)
        if self.training:
            branch = branch * branch.new_empty(branch.shape[0], 1, 1, 1).bernoulli_(0.9) / 0.9
        return self.fc(torch.relu(h + branch).mean((2, 3)))


class ShapeBranchNet(nn.Module):
    """Python control flow on shapes, as timm writes same padding and window partitions: plain
    torch.fx cannot trace it, tracing specialised to the example's shapes can."""

    def __init__(self, in_channels: int = 3, num_classes: int = 4, window: int = 4):
        super().__init__()
        self.window = window
        self.a = nn.Conv2d(in_channels, 6, 3, padding=1)
        self.b = nn.Linear(6, 5)
        self.fc = nn.Linear(5, num_classes)

    def forward(self, x):
        h = torch.relu(self.a(x)).permute(0, 2, 3, 1)
        b, height, width, c = h.shape
        pad_h, pad_w = (self.window - height % self.window) % self.window, (self.window - width % self.window) % self.window
        if pad_h or pad_w:
            h = F.pad(h, (0, 0, 0, pad_w, 0, pad_h))
        rows, cols = h.size(1) // self.window, h.size(2) // self.window
        windows = h.view(b, rows, self.window, cols, self.window, c).permute(0, 1, 3, 2, 4, 5).reshape(b * rows * cols, -1, c)
        out = torch.relu(self.b(windows))
        return self.fc(out.reshape(b, len(windows) // b, -1, out.shape[-1]).mean((1, 2)))


def windowed_linear(x, weight, bias):
    """A library function written for eager mode (shape arithmetic, a mask built in place), kept
    whole by torch.fx.wrap as torchvision keeps Swin's attention."""
    _, height, width, _ = x.shape
    pad = (2 - height % 2) % 2
    x = F.pad(x, (0, 0, 0, pad, 0, pad))
    mask = x.new_zeros(x.shape[1], x.shape[2])
    mask[:height, :width] = 1.0
    return (F.linear(x, weight, bias) * mask[..., None])[:, :height, :width]


torch.fx.wrap("windowed_linear")


class WrappedFunctionNet(nn.Module):
    """Calls windowed_linear with its Linear's parameters: traced through, both groups are free."""

    def __init__(self, in_channels: int = 3, num_classes: int = 4):
        super().__init__()
        self.a = nn.Conv2d(in_channels, 6, 3, padding=1)
        self.lin = nn.Linear(6, 5)
        self.fc = nn.Linear(5, num_classes)

    def forward(self, x):
        h = windowed_linear(torch.relu(self.a(x)).permute(0, 2, 3, 1), self.lin.weight, self.lin.bias)
        return self.fc(torch.relu(h).mean((1, 2)))


class SetitemNet(nn.Module):
    """Writes one conv's output into another's in place: their channels are mixed, so both freeze."""

    def __init__(self, in_channels: int = 3, num_classes: int = 4):
        super().__init__()
        self.a, self.b = nn.Conv2d(in_channels, 6, 3, padding=1), nn.Conv2d(in_channels, 6, 3, padding=1)
        self.c = nn.Conv2d(in_channels, 5, 3, padding=1)
        self.fc = nn.Linear(11, num_classes)

    def forward(self, x):
        h = torch.relu(self.a(x))
        h[:, :, :2] = torch.relu(self.b(x))[:, :, :2]
        return self.fc(torch.cat([h, torch.relu(self.c(x))], 1).mean((2, 3)))


class ShiftedWindowNet(nn.Module):
    """Swin's moves on a channels-last map: pad H and W (C padded by nothing, by F.pad and by a pad
    module), roll and flip them; none touches the channels, so every group stays free."""

    def __init__(self, in_channels: int = 3, num_classes: int = 4):
        super().__init__()
        self.a = nn.Conv2d(in_channels, 6, 3, padding=1)
        self.b = nn.Linear(6, 5)
        self.pad = nn.ConstantPad3d((0, 0, 1, 0, 1, 0), 0.0)
        self.fc = nn.Linear(5, num_classes)

    def forward(self, x):
        h = torch.relu(self.a(x)).permute(0, 2, 3, 1)
        side = h.shape[1]
        h = torch.roll(F.pad(h, (0, 0, 0, 1, 0, 1)), shifts=(1, 1), dims=(1, 2))
        h = self.pad(torch.relu(self.b(h))).flip(1)[:, :side, :side]
        return self.fc(torch.flip(h, dims=[2]).mean((1, 2)))


class OptionalArgsNet(nn.Module):
    """forward(x, mask=None, scale=1.0) that branches on `mask is not None` (timm's Hiera); an
    RMSNorm module and F.rms_norm with a weight of its own, clamp and a power: every group free."""

    def __init__(self, in_channels: int = 3, num_classes: int = 4):
        super().__init__()
        self.a = nn.Conv2d(in_channels, 6, 3, padding=1)
        self.norm = nn.RMSNorm(6)
        self.b = nn.Linear(6, 5)
        self.gain = nn.Parameter(torch.rand(5) + 0.5)
        self.fc = nn.Linear(5, num_classes)

    def forward(self, x, mask=None, scale: float = 1.0):
        h = torch.relu(self.a(x)).permute(0, 2, 3, 1)
        if mask is not None:
            h = h * mask
        h = self.b(self.norm(h)).clamp(-1.0, 1.0) ** 2 * scale
        return self.fc(F.rms_norm(h, (5,), self.gain).mean((1, 2)))


class UpsamplingNet(nn.Module):
    """A decoder's upsampling: a strided conv down, a transposed conv (weight: in x out x k x k) up."""

    def __init__(self, in_channels: int = 3, num_classes: int = 4):
        super().__init__()
        self.down = nn.Conv2d(in_channels, 6, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(6, 5, 2, stride=2)
        self.mix = nn.Conv2d(5, 7, 1)
        self.fc = nn.Linear(7, num_classes)

    def forward(self, x):
        h = torch.relu(self.up(torch.relu(self.down(x))))
        return self.fc(torch.relu(self.mix(h)).mean((2, 3)))


class RepeatNet(nn.Module):
    """Channels repeated whole (repeat, tile), each in place (repeat_interleave) and unfolded into
    patches (F.unfold, nn.Unfold: im2col, as VOLO does): every copy moves with its group."""

    def __init__(self, in_channels: int = 3, num_classes: int = 4):
        super().__init__()
        self.a = nn.Conv2d(in_channels, 4, 3, padding=1)
        self.b = nn.Conv2d(8, 5, 1)
        self.c = nn.Conv2d(10, 6, 1)
        self.d = nn.Linear(6 * 4, 7)
        self.unfold = nn.Unfold(2)
        self.fc = nn.Linear(7 * 4 * 2, num_classes)

    def forward(self, x):
        h = torch.relu(self.b(torch.relu(self.a(x)).repeat(1, 2, 1, 1)))
        h = torch.relu(self.c(torch.repeat_interleave(h, 2, dim=1)))
        h = torch.relu(self.d(F.unfold(h, 2, stride=2).transpose(1, 2)))  # (N, 9 patches, 7)
        h = self.unfold(h.transpose(1, 2).reshape(len(x), 7, 3, 3))
        return self.fc(h.mean(2).tile((1, 2)))


class ConcatNet(nn.Module):
    """Concatenates two branches and its own input along channels (Inception's and DenseNet's
    pattern); with flat=True a Linear also reads the joined C x H x W map flattened."""

    def __init__(self, in_channels: int = 3, num_classes: int = 4, flat: bool = False, side: int = 2):
        super().__init__()
        self.a = nn.Conv2d(in_channels, 4, 3, padding=1)
        self.b = nn.Conv2d(in_channels, 3, 3, padding=1)
        self.c = nn.Conv2d(7 + in_channels, 6, 3, padding=1)
        self.fc = nn.Linear(6, num_classes)
        self.side = nn.Sequential(nn.AdaptiveAvgPool2d(side), nn.Flatten(), nn.Linear((7 + in_channels) * side * side, num_classes)) if flat else None

    def forward(self, x):
        x = torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x)), x], 1)
        out = self.fc(torch.relu(self.c(x)).mean((2, 3)))
        return out if self.side is None else out + self.side(x)


class ConcatSumNet(ConcatNet):
    """Adds a conv's output to a concatenation: the conv's channels are cut as the parts are, each
    piece moving with its part; the piece added to the input's channels, which no group carries, freezes."""

    def __init__(self, in_channels: int = 3, num_classes: int = 4):
        super().__init__(in_channels, num_classes)
        self.d = nn.Conv2d(in_channels, 7 + in_channels, 3, padding=1)

    def forward(self, x):
        x = torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x)), x], 1) + self.d(x)
        return self.fc(torch.relu(self.c(x)).mean((2, 3)))


class SplitConcatNet(nn.Module):
    """YOLOv8's C2f pattern: a conv's output chunked in two, a branch grown from the second half,
    and the halves and the branch concatenated (one group appears twice among the parts)."""

    def __init__(self, in_channels: int = 3, num_classes: int = 4):
        super().__init__()
        self.a = nn.Conv2d(in_channels, 8, 1)
        self.m = nn.Conv2d(4, 4, 3, padding=1)
        self.b = nn.Conv2d(12, 6, 1)
        self.fc = nn.Linear(6, num_classes)

    def forward(self, x):
        halves = torch.relu(self.a(x)).chunk(2, 1)
        y = torch.cat([halves[0], halves[1], torch.relu(self.m(halves[1]))], 1)
        return self.fc(torch.relu(self.b(y)).mean((2, 3)))


class ConcatResidualNet(nn.Module):
    """GhostNet's pattern: blocks whose output concatenates a conv and a conv of it, added to a
    residual stream: the summed concatenations meet part by part (a bug once forgot all but one of
    them and permuted the rest). `seams`: the later blocks' (primary, cheap) widths; where they
    differ from the first block's (3, 3), every concatenation is cut at both's seams."""

    def __init__(self, in_channels: int = 3, num_classes: int = 4, seams: tuple[int, int] = (3, 3)):
        super().__init__()
        a, b = seams
        self.p = nn.ModuleList([nn.Conv2d(in_channels, 3, 1)] + [nn.Conv2d(6, a, 1) for _ in range(2)])
        self.d = nn.ModuleList([nn.Conv2d(3, 3, 3, padding=1, groups=3)] + [nn.Conv2d(a, b, 3, padding=1) for _ in range(2)])
        self.fc1 = nn.Linear(6, 5)
        self.fc2 = nn.Linear(5, num_classes)

    def forward(self, x):
        for k, (p, d) in enumerate(zip(self.p, self.d)):
            y = p(x)
            y = torch.cat([y, d(y)], 1)
            x = y if k == 0 else x + y
        return self.fc2(torch.relu(self.fc1(x.mean((2, 3)))))


class _ConvSame(nn.Conv2d):
    def forward(self, x):  # timm's Conv2dSame: pads, then the functional conv
        return F.conv2d(F.pad(x, (1, 1, 1, 1)), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class _StdConv(nn.Conv2d):
    def forward(self, x):  # NFNet's weight standardisation: a weight computed in forward
        return F.conv2d(x, self.weight - self.weight.mean((1, 2, 3), keepdim=True), self.bias, padding=1)


class _ScaledStdConv(nn.Conv2d):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(in_channels, out_channels, 3, padding=1)
        self.gain = nn.Parameter(torch.rand(out_channels, 1, 1, 1) + 0.5)

    def forward(self, x):  # timm's ScaledStdConv2d (NFNet): the weight flattened per output channel, standardised, restored
        w = F.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None, weight=(self.gain * 0.5).view(-1),
                         training=True, momentum=0.0, eps=1e-6).reshape_as(self.weight)
        return F.conv2d(x, w, self.bias, padding=1)


class _BatchNormAct(nn.BatchNorm2d):
    def forward(self, x):  # timm's BatchNormAct2d
        return torch.relu(F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps))


class _GroupNorm1(nn.GroupNorm):
    def __init__(self, channels: int):
        super().__init__(1, channels)

    def forward(self, x):
        return F.group_norm(x, 1, self.weight, self.bias, self.eps)


class _CastLinear(nn.Linear):
    def forward(self, x):  # timm's Linear
        return F.linear(x, self.weight.to(x.dtype), self.bias.to(x.dtype))


class FunctionalNet(nn.Module):
    """Layers written as timm writes them: torch.nn subclasses whose forward calls F.conv2d after
    a pad, F.batch_norm then an activation, F.group_norm, F.linear through casts; a learned scale
    on a concatenation, ConvNeXt-V2's global response norm (torch.norm over space, addcmul), a
    leaky ReLU by torch.where and a reshape_as."""

    def __init__(self, in_channels: int = 3, num_classes: int = 4, std_conv: bool = False):
        super().__init__()
        self.a = _ConvSame(in_channels, 6, 3)
        self.bn = _BatchNormAct(6)
        self.b = _ConvSame(6, 5, 3)
        self.gamma = nn.Parameter(torch.rand(11) + 0.5)
        self.c = (_StdConv if std_conv else _ConvSame)(11, 8, 3)
        self.gn = _GroupNorm1(8)
        self.grn = nn.Parameter(torch.rand(2, 8))
        self.fc = nn.Sequential(_CastLinear(8, 7), nn.ReLU(), nn.Linear(7, num_classes))

    def forward(self, x):
        y = self.bn(self.a(x))
        x = torch.cat([y, torch.relu(self.b(y))], 1) * self.gamma.view(1, -1, 1, 1)
        x = self.gn(self.c(x))
        gx = torch.norm(x, p=2, dim=(2, 3), keepdim=True)
        x = torch.addcmul(self.grn[1].view(1, -1, 1, 1), self.grn[0].view(1, -1, 1, 1), x * gx / (gx.mean(dim=1, keepdim=True) + 1e-6)) + x
        x = torch.where(x > 0, x, 0.1 * x).flatten(2).reshape_as(x)
        return self.fc(x.mean((2, 3)))


class StdConvNet(FunctionalNet):
    """Weights standardised in forward: by their mean (c) and as NFNet does (b)."""

    def __init__(self, in_channels: int = 3, num_classes: int = 4):
        super().__init__(in_channels, num_classes, std_conv=True)
        self.b = _ScaledStdConv(6, 5)


class ReusedWeightNet(nn.Module):
    """Calls a Linear, then reads its weight again through F.linear on another branch."""

    def __init__(self, in_channels: int = 3, num_classes: int = 4):
        super().__init__()
        self.a = nn.Linear(in_channels, 5)
        self.b = nn.Linear(in_channels, 5)
        self.lin = nn.Linear(5, 5)
        self.fc = nn.Linear(5, 6)
        self.out = nn.Linear(6, num_classes)

    def forward(self, x):
        x = x.mean((2, 3))
        h = torch.relu(self.lin(torch.relu(self.a(x))))
        g = torch.relu(F.linear(torch.relu(self.b(x)), self.lin.weight, self.lin.bias))
        return self.out(torch.relu(self.fc(h + g)))


class SelectiveKernelNet(nn.Module):
    """SKNet's pattern: two conv paths stacked on a new axis, weighted by a softmax over the paths and
    summed: the stack ties the paths' channels into one group."""

    def __init__(self, in_channels: int = 3, num_classes: int = 4):
        super().__init__()
        self.paths = nn.ModuleList([nn.Conv2d(in_channels, 6, 3, padding=1), nn.Conv2d(in_channels, 6, 5, padding=2)])
        self.select = nn.Linear(6, 2)
        self.fc = nn.Linear(6, num_classes)

    def forward(self, x):
        paths = torch.stack([torch.relu(p(x)) for p in self.paths], 1)  # (N, 2, 6, H, W)
        weights = self.select(paths.sum(1).mean((2, 3))).softmax(1)
        return self.fc((paths * weights[:, :, None, None, None]).sum(1).mean((2, 3)))


class HStackNet(nn.Module):
    """Joins two layers' units with torch.hstack, an op the tracer does not know and that takes a list."""

    def __init__(self, in_channels: int = 3, num_classes: int = 4):
        super().__init__()
        self.a = nn.Linear(in_channels, 4)
        self.b = nn.Linear(in_channels, 3)
        self.c = nn.Linear(in_channels, 5)
        self.fc = nn.Linear(7, num_classes)
        self.out = nn.Linear(5, num_classes)

    def forward(self, x):
        x = x.mean((2, 3))
        return self.fc(torch.hstack([torch.relu(self.a(x)), torch.relu(self.b(x))])) + self.out(torch.relu(self.c(x)))


class GatedNet(nn.Module):
    """A gated conv (GLU: one half of the channels gates the other) and a split along space whose
    halves are added back: the halves are packed copies of one group (they move together), the
    split along space changes nothing."""

    def __init__(self, in_channels: int = 3, num_classes: int = 4):
        super().__init__()
        self.a = nn.Conv2d(in_channels, 8, 3, padding=1)
        self.b = nn.Conv2d(4, 5, 3, padding=1)
        self.fc = nn.Linear(5, num_classes)

    def forward(self, x):
        value, gate = self.a(x).chunk(2, dim=1)
        top, bottom = torch.relu(self.b(value * torch.sigmoid(gate))).split(3, dim=2)
        return self.fc((top + bottom).mean((2, 3)))


class WindowNet(nn.Module):
    """A pad of a conv's channels and a pooling window over a Linear's features: both mix or shift
    units, so those groups must freeze; the Linear after them stays free."""

    def __init__(self, in_channels: int = 3, num_classes: int = 4):
        super().__init__()
        self.a = nn.Conv2d(in_channels, 6, 3, padding=1)
        self.b = nn.Linear(8, 8)
        self.c = nn.Linear(4, 5)
        self.fc = nn.Linear(5, num_classes)

    def forward(self, x):
        h = F.pad(torch.relu(self.a(x)), (0, 0, 0, 0, 1, 1))
        v = torch.relu(self.b(h.mean((2, 3))))
        v = F.max_pool1d(v.unsqueeze(1), 2).flatten(1)
        return self.fc(torch.relu(self.c(v)))


class ResampleNet(nn.Module):
    """Interpolation, upsampling and spatial padding act on each channel alone; a matrix product
    with a parameter contracts a group: every group stays free."""

    def __init__(self, in_channels: int = 3, num_classes: int = 4):
        super().__init__()
        self.a = nn.Conv2d(in_channels, 6, 3, padding=1)
        self.pad = nn.ZeroPad2d(1)
        self.b = nn.Conv2d(6, 5, 3)
        self.up = nn.Upsample(scale_factor=2)
        self.proj = nn.Parameter(torch.randn(5, 7) / 5**0.5)
        self.c = nn.Linear(7, 6)
        self.fc = nn.Linear(6, num_classes)

    def forward(self, x):
        h = F.interpolate(torch.relu(self.a(x)), scale_factor=2.0, mode="bilinear")
        h = F.pad(self.up(torch.relu(self.b(self.pad(h)))), (1, 1, 1, 1))
        v = torch.relu(h.mean((2, 3)) @ self.proj)
        return self.fc(torch.relu(self.c(v)))


class ArgmaxNet(nn.Module):
    """Reads where a max over a Linear's units lies (its indices): those units must freeze.
    torch.max of two tensors is element-wise and keeps its group."""

    def __init__(self, in_channels: int = 3, num_classes: int = 4):
        super().__init__()
        self.a = nn.Linear(in_channels, 8)
        self.b = nn.Linear(8, 5)
        self.c = nn.Linear(8, 5)
        self.fc = nn.Linear(5, num_classes)

    def forward(self, x):
        h = torch.relu(self.a(x.mean((2, 3))))
        top = h.max(dim=1)
        v = torch.max(self.b(h), self.c(h))
        return self.fc(v) + top.indices.float().unsqueeze(1) + top.values.unsqueeze(1)


class TinyTransformer(nn.Module):
    """A home-made transformer block, one token per pixel: class token, attention heads
    written with Linear layers and matrix products (or F.scaled_dot_product_attention), token 0
    read by x[:, 0], a strided slice of channels. The stream, the MLP and the heads (q, k, v rows and
    o's columns, split into heads by a reshape) are permutable; the layer read at every other channel
    from the second on, 3 of its 7, freezes (through the whole axis, [..., 1::2] of 6, it would move in pairs)."""

    def __init__(self, in_channels: int = 3, num_classes: int = 4, dim: int = 8, heads: int = 2, sdpa: bool = False):
        super().__init__()
        self.heads, self.sdpa = heads, sdpa
        self.emb = nn.Linear(in_channels, dim)
        self.cls = nn.Parameter(torch.randn(1, 1, dim))
        self.ln = nn.LayerNorm(dim)
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.m1, self.m2 = nn.Linear(dim, 16), nn.Linear(16, dim)
        self.side = nn.Linear(dim, 7)
        self.head, self.side_head = nn.Linear(dim, num_classes), nn.Linear(3, num_classes)

    def forward(self, x):
        b = x.shape[0]
        t = torch.cat([self.cls.expand(b, -1, -1), self.emb(x.flatten(2).transpose(1, 2))], 1)
        y = self.ln(t)

        def split_heads(z):
            return z.reshape(b, -1, self.heads, z.shape[-1] // self.heads).transpose(1, 2)

        q, k, v = split_heads(self.q(y)), split_heads(self.k(y)), split_heads(self.v(y))
        att = F.scaled_dot_product_attention(q, k, v) if self.sdpa else torch.softmax(q @ k.transpose(-2, -1), -1) @ v
        t = t + self.o(att.transpose(1, 2).reshape(b, -1, t.shape[-1]))
        t = t + self.m2(torch.relu(self.m1(self.ln(t))))
        return self.head(t[:, 0]) + self.side_head(torch.relu(self.side(t[:, 0]))[..., 1::2])


class RowsNet(RollNet):
    """RollNet's layers, but it splits the first conv's output into bands of rows and concatenates
    two of them back: space changes, the channels keep their group."""

    def forward(self, x):
        bands = torch.relu(self.a(x)).chunk(3, dim=2)
        return self.fc(torch.relu(self.b(torch.cat(bands[:2], dim=2))).mean((2, 3)))


class CrossAttentionNet(nn.Module):
    """nn.MultiheadAttention with keys and values of another width (kdim, vdim): the queries'
    group, the keys' group and the attention's output (added to the queries) stay permutable."""

    def __init__(self, in_channels: int = 3, num_classes: int = 4):
        super().__init__()
        self.q = nn.Linear(in_channels, 8)
        self.kv = nn.Linear(in_channels, 6)
        self.att = nn.MultiheadAttention(8, 2, batch_first=True, kdim=6, vdim=6)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        tokens = x.flatten(2).transpose(1, 2)
        q, kv = torch.relu(self.q(tokens)), torch.relu(self.kv(tokens))
        out, _ = self.att(q, kv, kv)
        return self.fc((q + out).mean(1))


class PackedAttentionNet(nn.Module):
    """Attention as timm writes it: one Linear for q, k and v, reshaped to (3, heads, d), permuted,
    unbound, scaled_dot_product_attention, and merged back into the output projection; or as
    MaxViT does: the Linear's output chunked in three, each reshaped into heads, and einsums."""

    def __init__(self, in_channels: int = 3, num_classes: int = 4, dim: int = 8, heads: int = 2, einsum: bool = False):
        super().__init__()
        self.heads, self.einsum = heads, einsum
        self.emb, self.qkv, self.proj = nn.Linear(in_channels, dim), nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp, self.fc = nn.Sequential(nn.Linear(dim, 12), nn.GELU(), nn.Linear(12, dim)), nn.Linear(dim, num_classes)

    def forward(self, x):
        t = self.emb(x.flatten(2).transpose(1, 2))
        b, n, c = t.shape
        if self.einsum:
            q, k, v = self.qkv(t).chunk(3, dim=-1)
            q, k, v = (z.reshape(b, n, self.heads, c // self.heads) for z in (q, k, v))
            att = torch.einsum("b h i j, b j h d -> b i h d", torch.einsum("bihd,bjhd->bhij", q, k).softmax(-1), v)
            t = t + self.proj(att.reshape(b, n, c))
        else:
            q, k, v = self.qkv(t).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
            t = t + self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c))
        return self.fc((t + self.mlp(t)).mean(1))


class RelativeBiasAttentionNet(nn.Module):
    """Swin's window attention: a bias per head gathered from a table by a relative-position index
    and added to the logits of each window (the batch axis split into windows), q and k optionally
    normalised within each head (SwinV2's cosine attention). The table moves with whole heads;
    with shared=True two attentions read one table, so neither's heads can move. sdpa=True passes
    the bias as scaled_dot_product_attention's attn_mask; mlp=True computes it with a Linear from
    relative coordinates (timm's RelPosMlp), whose rows then move with the heads."""

    def __init__(self, in_channels: int = 3, num_classes: int = 4, dim: int = 8, heads: int = 2, tokens: int = 4,
                 cosine: bool = False, shared: bool = False, sdpa: bool = False, mlp: bool = False):
        super().__init__()
        self.heads, self.cosine, self.shared, self.sdpa = heads, cosine, shared, sdpa
        self.emb, self.fc = nn.Linear(in_channels, dim), nn.Linear(dim, num_classes)
        self.qkv = nn.ModuleList(nn.Linear(dim, 3 * dim) for _ in range(2 if shared else 1))
        self.proj = nn.ModuleList(nn.Linear(dim, dim) for _ in range(2 if shared else 1))
        self.table = nn.Parameter(torch.randn(7, heads))
        self.rel = nn.Linear(2, heads) if mlp else None
        self.register_buffer("coords", torch.randn(7, 2, generator=torch.Generator().manual_seed(1)))
        self.register_buffer("index", torch.randint(0, 7, (tokens * tokens,), generator=torch.Generator().manual_seed(0)))

    def attend(self, t, qkv, proj):
        b, n, c = t.shape
        q, k, v = qkv(t).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        if self.cosine:
            q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        table = self.rel(self.coords) if self.rel is not None else self.table
        bias = table[self.index].view(n, n, -1).permute(2, 0, 1)
        if self.sdpa:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.unsqueeze(0))
        else:
            logits = ((q @ k.transpose(-2, -1)).view(b // 2, 2, self.heads, n, n) + bias.unsqueeze(0)).view(b, self.heads, n, n)
            out = logits.softmax(-1) @ v
        return t + proj(out.transpose(1, 2).reshape(b, n, c))

    def forward(self, x):
        t = self.emb(x.flatten(2).transpose(1, 2))
        for qkv, proj in zip(self.qkv, self.proj):
            t = self.attend(t, qkv, proj)
        return self.fc(t.mean(1))


class TorchEncoderNet(nn.Module):
    """torch.nn's own transformer encoder (post-norm with ReLU, or pre-norm with GELU and a final
    norm): its blocks are traced through their plain math, so stream and MLP units stay permutable."""

    def __init__(self, in_channels: int = 3, num_classes: int = 4, norm_first: bool = False):
        super().__init__()
        self.inp = nn.Linear(in_channels, 8)
        layer = nn.TransformerEncoderLayer(8, 2, 12, dropout=0.1, batch_first=True, norm_first=norm_first,
                                           activation="gelu" if norm_first else "relu")
        self.encoder = nn.TransformerEncoder(layer, 2, norm=nn.LayerNorm(8) if norm_first else None, enable_nested_tensor=False)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.fc(self.encoder(self.inp(x.flatten(2).transpose(1, 2))).mean(1))


class Seq2SeqNet(nn.Module):
    """nn.Transformer with a causal target mask: source and target streams meet in the decoder's
    cross-attention, whose packed input projection reads both, so they form one group."""

    def __init__(self, in_channels: int = 3, num_classes: int = 4):
        super().__init__()
        self.src, self.tgt = nn.Linear(in_channels, 8), nn.Linear(in_channels, 8)
        self.transformer = nn.Transformer(8, 2, 1, 1, 12, dropout=0.1, batch_first=True)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        tokens = x.flatten(2).transpose(1, 2)
        mask = nn.Transformer.generate_square_subsequent_mask(3)
        return self.fc(self.transformer(self.src(tokens), self.tgt(tokens[:, :3]), tgt_mask=mask).mean(1))


class TiedNet(nn.Module):
    """Two layers sharing one weight matrix (tied weights): one tensor takes one permutation, so the
    groups it reads and writes become one."""

    def __init__(self, in_channels: int = 3, num_classes: int = 4):
        super().__init__()
        self.inp = nn.Linear(in_channels, 8)
        self.a = nn.Linear(8, 8)
        self.b = nn.Linear(8, 8)
        self.b.weight = self.a.weight
        self.mid = nn.Linear(8, 5)
        self.fc = nn.Linear(5, num_classes)

    def forward(self, x):
        x = torch.relu(self.inp(x.mean((2, 3))))
        x = torch.relu(self.b(torch.relu(self.a(x))))
        return self.fc(torch.relu(self.mid(x)))


class BranchyMLP(nn.Module):
    """Two hidden layers and a branch on a tensor's value: torch.fx cannot trace it, so its spec is
    written by hand (tests/test_api.py)."""

    def __init__(self, in_features: int = 12, num_classes: int = 4):
        super().__init__()
        self.a = nn.Linear(in_features, 8)
        self.b = nn.Linear(8, 6)
        self.fc = nn.Linear(6, num_classes)

    def forward(self, x):
        h = torch.relu(self.a(x.flatten(1)))
        if h.sum() > 0:
            h = 2 * h
        return self.fc(torch.relu(self.b(h)))


def branchy_spec(model: nn.Module | None = None):
    """BranchyMLP's spec, written by hand (model.spec=tests.custom_nets.branchy_spec)."""
    from fusionctl import AlignmentSpec, Axis, Unit

    a, b = Axis("a"), Axis("b")
    axes = {"a.weight": (a, None), "a.bias": (a,), "b.weight": (b, a), "b.bias": (b,), "fc.weight": (None, b), "fc.bias": (None,)}
    return AlignmentSpec(("a", "b"), axes, {"a": (Unit("a"),), "b": (Unit("b"),)})


def wrong_branchy_spec(model: nn.Module | None = None):
    """branchy_spec with a slip: b's columns do not move with a's units, so permuting a changes the function."""
    spec = branchy_spec(model)
    return dataclasses.replace(spec, axes={**spec.axes, "b.weight": (spec.axes["b.weight"][0], None)})


class SizeCheckNet(nn.Module):
    """Checks its input's size with an empty message, as timm's blocks do (a Python assert, or
    torch._assert, which plain torch.fx keeps in the graph): a wrong size is the inputs' fault."""

    def __init__(self, in_channels: int = 3, num_classes: int = 4, python_assert: bool = True):
        super().__init__()
        self.python_assert = python_assert
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, x):
        if self.python_assert:
            assert x.shape[-1] % 4 == 0
        else:
            torch._assert(x.shape[-1] % 4 == 0, "")
        return self.fc(x.mean((2, 3)))


def rotate_half(x):
    """LLaMA's: (x1, x2) -> (-x2, x1) on each head's two halves."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], -1)


class RotaryAttentionNet(nn.Module):
    """Attention with rotary position embeddings as LLaMA writes them: q and k of every head
    rotated by a fixed cos/sin table along the head's channels (a non-persistent inv_freq buffer,
    positions from arange, torch.outer). The table fixes each channel's place in its head, so q and
    k move only as whole heads (v with them: the attention ties them). `halves` slices the halves
    instead of chunking them; `packed` computes q, k, v in one Linear; `qk_norm` normalises q and
    k over each head's channels with weights shared by every head (an nn.LayerNorm, and F.rms_norm
    with a parameter of its own, as Gemma's vision tower does), which also allows only whole heads;
    `complex_pairs` rotates adjacent channel pairs as complex numbers, as Llama 4 does."""

    def __init__(self, in_channels: int = 3, num_classes: int = 4, dim: int = 8, heads: int = 2, halves: bool = False, packed: bool = False,
                 qk_norm: bool = False, complex_pairs: bool = False):
        super().__init__()
        self.heads, self.halves, self.packed, self.qk_norm, self.complex_pairs = heads, halves, packed, qk_norm, complex_pairs
        self.embed = nn.Conv2d(in_channels, dim, 2, stride=2)
        if packed:
            self.qkv = nn.Linear(dim, 3 * dim)
        else:
            self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 12), nn.GELU(), nn.Linear(12, dim))
        self.fc = nn.Linear(dim, num_classes)
        d = dim // heads
        if qk_norm:
            self.q_norm, self.k_scale = nn.LayerNorm(d), nn.Parameter(torch.rand(d) + 0.5)
        self.register_buffer("inv_freq", 1.0 / 100 ** (torch.arange(0, d, 2).float() / d), persistent=False)

    def rotate(self, x, cos, sin):
        if self.complex_pairs:  # (..., d) as d/2 complex numbers, each turned by its position's angle
            turn = torch.polar(torch.ones_like(cos[:, : cos.shape[1] // 2]), torch.atan2(sin, cos)[:, : cos.shape[1] // 2])
            return torch.view_as_real(torch.view_as_complex(x.reshape(*x.shape[:-1], -1, 2)) * turn).flatten(-2)
        if self.halves:
            half = x.shape[-1] // 2
            return x * cos + torch.cat([-x[..., half:], x[..., :half]], -1) * sin
        return x * cos + rotate_half(x) * sin

    def forward(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)  # (B, N, dim)
        b, n, c = t.shape
        if self.packed:
            q, k, v = self.qkv(t).reshape(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        else:
            q, k, v = (f(t).view(b, n, self.heads, -1).transpose(1, 2) for f in (self.q, self.k, self.v))
        if self.qk_norm:
            q, k = self.q_norm(q), F.rms_norm(k, (k.shape[-1],), self.k_scale)
        angles = torch.outer(torch.arange(n, dtype=t.dtype), self.inv_freq)
        emb = torch.cat([angles, angles], -1)
        cos, sin = emb.cos(), emb.sin()
        q, k = self.rotate(q, cos, sin), self.rotate(k, cos, sin)
        att = torch.softmax(q @ k.transpose(-2, -1) / 2.0, -1) @ v
        t = t + self.proj(att.transpose(1, 2).reshape(b, n, c))
        t = t + self.mlp(t)
        return self.fc(t.mean(1))


class UnevenQKVNet(nn.Module):
    """LeViT's attention: one Linear computes per head a key_dim q, a key_dim k and a wider v,
    split unevenly inside each head; the values merged back are read by the output projection.
    The split fixes each channel's place in its head, so the heads move only whole, and the
    projection's columns move in blocks of v's width with them."""

    def __init__(self, in_channels: int = 3, num_classes: int = 4, dim: int = 6, heads: int = 2, key_dim: int = 2, v_dim: int = 3):
        super().__init__()
        self.heads, self.split = heads, [key_dim, key_dim, v_dim]
        self.embed = nn.Conv2d(in_channels, dim, 2, stride=2)
        self.qkv = nn.Linear(dim, heads * (2 * key_dim + v_dim))
        self.proj = nn.Linear(heads * v_dim, dim)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)
        b, n, _ = t.shape
        q, k, v = self.qkv(t).view(b, n, self.heads, -1).transpose(1, 2).split(self.split, dim=3)
        att = torch.softmax(q @ k.transpose(-2, -1), -1) @ torch.relu(v)
        t = t + self.proj(att.transpose(1, 2).reshape(b, n, -1))
        return self.fc(t.mean(1))


class TalkingHeadsNet(nn.Module):
    """Talking-heads attention (CaiT: a Linear mixes the logits across heads before the softmax;
    EfficientFormerV2: a 1x1 conv after it): both mixers' weights and biases have one entry per
    head on each axis, and move with the heads."""

    def __init__(self, in_channels: int = 3, num_classes: int = 4, dim: int = 8, heads: int = 2):
        super().__init__()
        self.heads = heads
        self.embed = nn.Conv2d(in_channels, dim, 2, stride=2)
        self.q, self.k, self.v, self.proj = (nn.Linear(dim, dim) for _ in range(4))
        self.mix_logits, self.mix_weights = nn.Linear(heads, heads), nn.Conv2d(heads, heads, 1)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)
        b, n, c = t.shape
        q, k, v = (f(t).view(b, n, self.heads, -1).transpose(1, 2) for f in (self.q, self.k, self.v))
        logits = self.mix_logits((q @ k.transpose(-2, -1)).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        att = self.mix_weights(torch.softmax(logits, -1)) @ v
        t = t + self.proj(att.transpose(1, 2).reshape(b, n, c))
        return self.fc(t.mean(1))


class GroupedQueryNet(nn.Module):
    """A LLaMA-style block: RMSNorm, grouped-query attention (each key/value head serves `heads //
    kv_heads` consecutive query heads: repeat_interleave, LLaMA's expand and reshape, or
    scaled_dot_product_attention's enable_gqa; `tile` repeats them whole instead, so query head h
    reads key head h mod kv_heads), optional rotary embeddings, and a SwiGLU MLP (`bias`: its Linears
    have biases, which LLaMA's lack; `head_bias`: a logit bias per query head; `packed="split"`:
    one qkv Linear split into sizes (H·d, K·d, K·d), or `"sliced"` into them by three slices, Phi-3's way; `packed="grouped"`: one
    viewed as K groups of H/K queries, a key and a value, Falcon's layout; `packed="gated"`: per head
    a query and a gate of the attention's output from one Linear, Qwen3-Next's). The query heads move with
    their key/value head; with rotary embeddings, only as whole heads."""

    def __init__(self, in_channels: int = 3, num_classes: int = 4, dim: int = 8, heads: int = 4, kv_heads: int = 2, repeat: str = "interleave",
                 rotary: bool = False, bias: bool = False, head_bias: bool = False, packed: str | None = None):
        super().__init__()
        self.heads, self.kv_heads, self.repeat, self.rotary, self.d = heads, kv_heads, repeat, rotary, dim // heads
        self.head_bias = nn.Parameter(torch.randn(heads, 1, 1)) if head_bias else None  # one logit bias per query head
        self.embed = nn.Conv2d(in_channels, dim, 2, stride=2)
        self.norm = nn.RMSNorm(dim)
        self.packed, self.o = packed, nn.Linear(heads * self.d, dim, bias=bias)
        if packed == "gated":  # per head a query and a gate from one Linear (Qwen3-Next's gated attention)
            self.qg = nn.Linear(dim, 2 * heads * self.d, bias=bias)
            self.k, self.v = nn.Linear(dim, kv_heads * self.d, bias=bias), nn.Linear(dim, kv_heads * self.d, bias=bias)
        elif packed:
            self.qkv = nn.Linear(dim, (heads + 2 * kv_heads) * self.d, bias=bias)
        else:
            self.q, self.k = nn.Linear(dim, heads * self.d, bias=bias), nn.Linear(dim, kv_heads * self.d, bias=bias)
            self.v = nn.Linear(dim, kv_heads * self.d, bias=bias)
        self.gate_up, self.down = nn.Linear(dim, 2 * 12, bias=bias), nn.Linear(12, dim, bias=bias)
        self.fc = nn.Linear(dim, num_classes)

    def shared(self, x, n_rep: int):
        b, h, n, d = x.shape
        if self.repeat == "interleave":
            return x.repeat_interleave(n_rep, dim=1)
        if self.repeat == "tile":
            return x.repeat(1, n_rep, 1, 1)
        return x[:, :, None, :, :].expand(b, h, n_rep, n, d).reshape(b, h * n_rep, n, d)

    def forward(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)
        b, n, c = t.shape
        q, k, v, gate = self.project(self.norm(t))
        if self.rotary:
            angles = torch.outer(torch.arange(n, dtype=t.dtype), 1.0 / 100 ** (torch.arange(0, self.d, 2, dtype=t.dtype) / self.d))
            cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()
            if self.packed == "sliced":  # Phi-3's form: rotate the first channels, append the rest (none here)
                (q, q_pass), (k, k_pass) = ((z[..., :self.d], z[..., self.d:]) for z in (q, k))
            q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
            if self.packed == "sliced":
                q, k = torch.cat([q, q_pass], -1), torch.cat([k, k_pass], -1)
        if self.repeat == "sdpa":
            att = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
        else:
            k, v = self.shared(k, self.heads // self.kv_heads), self.shared(v, self.heads // self.kv_heads)
            logits = q @ k.transpose(-2, -1) / 2.0
            att = torch.softmax(logits if self.head_bias is None else logits + self.head_bias, -1) @ v
        att = att.transpose(1, 2).reshape(b, n, -1)
        t = t + self.o(att if gate is None else att * gate.sigmoid())
        gate, up = self.gate_up(t).chunk(2, -1)
        t = t + self.down(F.silu(gate) * up)
        return self.fc(t.mean(1))

    def project(self, h):
        """q as (b, heads, n, d); k and v as (b, kv_heads, n, d); the gate of the attention's output, or None."""
        (b, n, _), heads, kv, d = h.shape, self.heads, self.kv_heads, self.d
        if self.packed == "gated":
            q, gate = self.qg(h).view(b, n, heads, 2 * d).chunk(2, -1)
            k, v = self.k(h).view(b, n, kv, d), self.v(h).view(b, n, kv, d)
            return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), gate.reshape(b, n, -1)
        if self.packed == "grouped":
            q, k, v = self.qkv(h).view(b, n, kv, heads // kv + 2, d).split([heads // kv, 1, 1], 3)
            q, k, v = (z.reshape(b, n, -1, d) for z in (q, k, v))
        elif self.packed == "sliced":  # each slice cuts the pieces the one before left
            qkv, at = self.qkv(h), heads * d
            q, k, v = (z.view(b, n, -1, d) for z in (qkv[..., :at], qkv[..., at:at + kv * d], qkv[..., at + kv * d:]))
        elif self.packed:
            q, k, v = (z.view(b, n, -1, d) for z in self.qkv(h).split([heads * d, kv * d, kv * d], -1))
        else:
            q, k, v = self.q(h).view(b, n, heads, d), self.k(h).view(b, n, kv, d), self.v(h).view(b, n, kv, d)
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), None


class CutAtWidth(nn.Module):
    """ReXNet's shortcut into the first `width` channels: where the widening conv is cut depends on
    a width, so this net at another width is not a fusion target of the same layout."""

    def __init__(self, in_channels: int = 3, num_classes: int = 4, width: int = 6):
        super().__init__()
        self.a, self.b, self.fc = nn.Conv2d(in_channels, width, 1), nn.Conv2d(width, width + 4, 1), nn.Linear(width + 4, num_classes)

    def forward(self, x):
        x = torch.relu(self.a(x))
        y = self.b(x)
        return self.fc(torch.cat([y[:, :x.shape[1]] + x, y[:, x.shape[1]:]], 1).mean((2, 3)))


class FirstChannelsShortcutNet(nn.Module):
    """ReXNet's shortcut: a block widens the stream and adds its input into the first channels only
    (cat([y[:, :c] + x, y[:, c:]])). The widening conv's units are cut there: its first c channels
    join the stream, the rest form a group of their own."""

    def __init__(self, in_channels: int = 3, num_classes: int = 4):
        super().__init__()
        self.a = nn.Conv2d(in_channels, 6, 3, padding=1)
        self.b, self.c = nn.Conv2d(6, 10, 1), nn.Conv2d(10, 14, 1)
        self.fc = nn.Linear(14, num_classes)

    def forward(self, x):
        x = torch.relu(self.a(x))
        y = self.b(x)
        y = torch.cat([y[:, :6] + x, y[:, 6:]], 1)
        z = self.c(torch.relu(y))
        z = torch.cat([z[:, :10] + y, z[:, 10:]], 1)
        return self.fc(z.mean((2, 3)))


class PartialConvNet(nn.Module):
    """FasterNet's partial convolution: the stream split unevenly, a conv on the first piece only, the
    pieces joined and mixed by an MLP added back to the stream; the stream's units are cut in two."""

    def __init__(self, in_channels: int = 3, num_classes: int = 4, dim: int = 8, part: int = 2, blocks: int = 2):
        super().__init__()
        self.split = [part, dim - part]
        self.stem = nn.Conv2d(in_channels, dim, 3, padding=1)
        self.partial = nn.ModuleList(nn.Conv2d(part, part, 3, padding=1) for _ in range(blocks))
        self.mlp = nn.ModuleList(nn.Sequential(nn.Conv2d(dim, 2 * dim, 1), nn.BatchNorm2d(2 * dim), nn.ReLU(), nn.Conv2d(2 * dim, dim, 1))
                                 for _ in range(blocks))
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x):
        x = self.stem(x)
        for partial, mlp in zip(self.partial, self.mlp):
            first, rest = torch.split(x, self.split, dim=1)
            x = x + mlp(torch.cat((partial(first), rest), 1))
        return self.fc(x.mean((2, 3)))


class DualPathNet(nn.Module):
    """DPN's dual path: one conv's output sliced into a residual piece added to the stream and a
    dense piece concatenated to it; its units are cut between the two."""

    def __init__(self, in_channels: int = 3, num_classes: int = 4):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, 8, 3, padding=1)
        self.w1, self.w2 = nn.Conv2d(8, 12, 1), nn.Conv2d(12, 12, 1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        x = self.stem(x)
        out = self.w1(torch.relu(x))
        x = torch.cat([x + out[:, :8], out[:, 8:]], 1)
        out = self.w2(torch.relu(x))
        resid, dense = x[:, :8] + out[:, :8], torch.cat([x[:, 8:], out[:, 8:]], 1)
        return self.fc(torch.cat([resid, dense], 1).mean((2, 3)))


class MixedConvNet(nn.Module):
    """MixNet's mixed convs: channels split evenly, a conv per piece, the pieces joined, and the join
    split again at the same seams; each split of the concatenation gives its parts back."""

    def __init__(self, in_channels: int = 3, num_classes: int = 4):
        super().__init__()
        self.a = nn.Conv2d(in_channels, 8, 3, padding=1)
        self.pw = nn.ModuleList(nn.Conv2d(4, 6, 1) for _ in range(2))
        self.dw = nn.ModuleList(nn.Conv2d(6, 6, k, padding=k // 2, groups=6) for k in (3, 5))
        self.fc = nn.Linear(12, num_classes)

    def forward(self, x):
        x = torch.relu(self.a(x))
        x = torch.cat([conv(p) for conv, p in zip(self.pw, x.split([4, 4], 1))], 1)
        x = torch.cat([conv(torch.relu(p)) for conv, p in zip(self.dw, x.split([6, 6], 1))], 1)
        return self.fc(x.mean((2, 3)))


class ConstantScaleNet(nn.Module):
    """Channels scaled by tensors outside the state dict (a non-persistent buffer, a plain tensor
    attribute): fusion never moves them, so the channels they scale cannot move either."""

    def __init__(self, in_channels: int = 3, num_classes: int = 4):
        super().__init__()
        self.a = nn.Conv2d(in_channels, 6, 3, padding=1)
        self.b = nn.Conv2d(6, 5, 3, padding=1)
        self.c = nn.Conv2d(5, 7, 3, padding=1)
        self.fc = nn.Linear(7, num_classes)
        self.register_buffer("scale", torch.rand(6, 1, 1) + 0.5, persistent=False)
        self.shift = torch.rand(5, 1, 1)

    def forward(self, x):
        h = torch.relu(self.b(torch.relu(self.a(x)) * self.scale)) + self.shift
        return self.fc(torch.relu(self.c(h)).mean((2, 3)))


class Untraceable(nn.Module):
    """Branches on a tensor's value: torch.fx cannot trace it."""

    def __init__(self, in_channels: int = 3, num_classes: int = 4):
        super().__init__()
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, x):
        if x.sum() > 0:
            x = -x
        return self.fc(x.mean((2, 3)))


class GroupedNet(nn.Module):
    """A ResNeXt-style bottleneck around a residual stream: a 1x1 conv, a 3x3 conv in `groups`
    groups, a 1x1 conv, each followed by BatchNorm. The grouped conv's inputs and outputs form one
    group that moves in whole blocks and within each block."""

    def __init__(self, in_channels: int = 3, num_classes: int = 4, width: int = 8, inner: int = 8, groups: int = 4):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.reduce = nn.Sequential(nn.Conv2d(width, inner, 1, bias=False), nn.BatchNorm2d(inner), nn.ReLU())
        self.grouped = nn.Sequential(nn.Conv2d(inner, inner, 3, padding=1, groups=groups, bias=False), nn.BatchNorm2d(inner), nn.ReLU())
        self.expand = nn.Sequential(nn.Conv2d(inner, width, 1, bias=False), nn.BatchNorm2d(width))
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        x = self.stem(x)
        x = F.relu(x + self.expand(self.grouped(self.reduce(x))))
        return self.fc(x.mean((2, 3)))


class DenseNetLike(nn.Module):
    """DenseNet's pattern: every layer reads the concatenation of all earlier feature maps through
    a BatchNorm, and so does the head; each layer's new channels are their own group."""

    def __init__(self, in_channels: int = 3, num_classes: int = 4, stem: int = 6, growth: int = 4, layers: int = 3):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, stem, 3, padding=1, bias=False)
        self.layers = nn.ModuleList(nn.Sequential(nn.BatchNorm2d(stem + i * growth), nn.ReLU(),
                                                  nn.Conv2d(stem + i * growth, growth, 3, padding=1, bias=False)) for i in range(layers))
        self.norm = nn.BatchNorm2d(stem + layers * growth)
        self.fc = nn.Linear(stem + layers * growth, num_classes)

    def forward(self, x):
        features = [self.stem(x)]
        for layer in self.layers:
            features.append(layer(torch.cat(features, 1)))
        return self.fc(torch.relu(self.norm(torch.cat(features, 1))).mean((2, 3)))


def _passes_through(fn):
    """A decorator taking (*args, **kwargs), as Hugging Face wraps its models' forward()."""

    @functools.wraps(fn)
    def wrapper(self, *args, **kwargs):
        return fn(self, *args, **kwargs)

    return wrapper


class _Gelu(nn.Module):
    def forward(self, x):
        return F.gelu(x)


class _Head(nn.Module):
    def __init__(self, num_classes: int):
        super().__init__()
        self.b = nn.Linear(6, num_classes)

    def forward(self, h, scale: float = 1.0, **kwargs):
        return self.b(h * scale)


class DecoratedForwardNet(nn.Module):
    """Hugging Face's ways with forward(): wrapped by a (*args, **kwargs) decorator, taking **kwargs
    and passing them on, and calling a stateless module made on the fly (its kernel wrappers)."""

    def __init__(self, in_channels: int = 3, num_classes: int = 4):
        super().__init__()
        self.a, self.head = nn.Linear(in_channels, 6), _Head(num_classes)

    @_passes_through
    def forward(self, x, scale: float = 1.0, **kwargs):
        return self.head(_Gelu()(self.a(x.mean((2, 3)))), scale=scale, **kwargs)


class KwargsForwardNet(DecoratedForwardNet):
    """DecoratedForwardNet undecorated: fx gives its **kwargs a placeholder that the call passing
    them on cannot unpack (XLNet's forward)."""

    def forward(self, x, scale: float = 1.0, **kwargs):
        return self.head(_Gelu()(self.a(x.mean((2, 3)))), scale=scale, **kwargs)


class ScaledEmbedding(nn.Embedding):
    """Gemma's embedding: nn.Embedding's lookup (F.embedding on its own weight), times sqrt(dim)."""

    def __init__(self, vocab: int, dim: int):
        super().__init__(vocab, dim)
        self.register_buffer("scale", torch.tensor(dim**0.5), persistent=False)

    def forward(self, ids):
        return super().forward(ids) * self.scale


class TiedEmbeddingNet(nn.Module):
    """A language model's tied weights: the output head reads the token embedding's matrix
    (`head.weight = embed.weight`), both indexing the hidden stream by their second axis; the
    embedding scales its lookup as Gemma's does. `tied_back`: a second Linear reuses `mix`'s weight
    the other way round, so its axes disagree."""

    def __init__(self, vocab: int = 11, dim: int = 6, tied_back: bool = False):
        super().__init__()
        self.embed, self.mix = ScaledEmbedding(vocab, dim), nn.Linear(dim, dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.embed.weight
        self.mix_bias = self.mix.bias  # a second name forward never reads (Hugging Face's lm_head.bias = lm_head.decoder.bias)
        self.back = nn.Linear(dim, dim, bias=False) if tied_back else None
        if tied_back:
            self.back.weight = self.mix.weight

    def forward(self, ids):
        h = self.embed(ids)
        g = torch.relu(self.mix(h))
        h = h + (self.back(g) if self.back is not None else g)
        return self.head(h).mean(1)


class Conv1D(nn.Module):
    """Hugging Face's Conv1D (GPT-2's layers): a Linear whose weight is stored (in, out), applied by torch.addmm."""

    def __init__(self, nf: int, nx: int):
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.randn(nx, nf) * nx**-0.5)
        self.bias = nn.Parameter(torch.randn(nf) * 0.1)

    def forward(self, x):
        size_out = x.size()[:-1] + (self.nf,)
        return torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight).view(size_out)


class GPT2StyleNet(nn.Module):
    """GPT-2's block as Hugging Face writes it: Conv1D layers, one c_attn split into q, k and v,
    scores cast back with `.type(dtype)`, LayerNorms before attention and MLP."""

    def __init__(self, in_channels: int = 3, num_classes: int = 4, dim: int = 8, heads: int = 2):
        super().__init__()
        self.heads = heads
        self.embed = nn.Conv2d(in_channels, dim, 2, stride=2)
        self.ln_1, self.ln_2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.c_attn, self.c_proj = Conv1D(3 * dim, dim), Conv1D(dim, dim)
        self.c_fc, self.mlp_proj = Conv1D(4 * dim, dim), Conv1D(dim, 4 * dim)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)
        b, n, c = t.shape
        q, k, v = (z.view(b, n, self.heads, -1).transpose(1, 2) for z in self.c_attn(self.ln_1(t)).split(c, dim=2))
        scores = torch.softmax((q @ k.transpose(-1, -2)).float() / 2.0, -1).type(v.dtype)
        t = t + self.c_proj((scores @ v).transpose(1, 2).reshape(b, n, c))
        t = t + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(t))))
        return self.fc(t.mean(1))


class EmptyReshapeNet(nn.Module):
    """Reshapes an empty tensor (DeepSeek-V4 unsqueezes one made by new_zeros): it holds no units."""

    def __init__(self, in_channels: int = 3, num_classes: int = 4):
        super().__init__()
        self.a, self.b = nn.Linear(in_channels, 6), nn.Linear(6, num_classes)

    def forward(self, x):
        h = torch.relu(self.a(x.mean((2, 3))))
        return self.b(h) + h.new_zeros(h.shape[0], 0).unsqueeze(1).sum()


class StackedExpertsNet(nn.Module):
    """A mixture of experts with weights stacked per expert, (experts, out, in), as Hugging Face
    stores them, each token routed to its top expert. grouped_mm: tokens sorted by expert through
    torch's grouped matmul (Hugging Face's default); else a loop over the experts, F.linear on
    weight[e]. Each expert is a GLU: its gate and up halves in one stacked weight."""

    def __init__(self, in_channels: int = 3, num_classes: int = 4, dim: int = 8, hidden: int = 8, experts: int = 3,
                 grouped_mm: bool = HAS_GROUPED_MM, patch: int = 2, routing_bias: bool = False):
        super().__init__()
        self.experts, self.grouped_mm = experts, grouped_mm
        if routing_bias:  # one entry per expert added to the router's logits, held by the block (as AFMoE's expert_bias)
            self.register_buffer("expert_bias", torch.linspace(-0.5, 0.5, experts))
        self.embed = nn.Conv2d(in_channels, dim, patch, stride=patch)
        self.norm = nn.LayerNorm(dim)
        self.router = nn.Linear(dim, experts, bias=False)
        self.gate_up_proj = nn.Parameter(torch.randn(experts, 2 * hidden, dim) / dim**0.5)
        self.down_proj = nn.Parameter(torch.randn(experts, dim, hidden) / hidden**0.5)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)
        b, n, c = t.shape
        h = self.norm(t).reshape(b * n, c)
        logits = self.router(h) + self.expert_bias if hasattr(self, "expert_bias") else self.router(h)
        weight, expert = torch.softmax(logits, -1).max(-1)
        if self.grouped_mm:
            order = torch.argsort(expert)
            offs = torch.cumsum(torch.bincount(expert, minlength=self.experts), 0).to(torch.int32)
            gate, up = F.grouped_mm(h[order], self.gate_up_proj.transpose(1, 2), offs=offs).chunk(2, -1)
            y = F.grouped_mm(F.silu(gate) * up, self.down_proj.transpose(1, 2), offs=offs)[torch.argsort(order)]
        else:
            y = torch.zeros_like(h)
            for e in range(self.experts):
                gate, up = F.linear(h, self.gate_up_proj[e]).chunk(2, -1)
                y = y + (expert == e).unsqueeze(-1) * F.linear(F.silu(gate) * up, self.down_proj[e])
        t = t + (y * weight.unsqueeze(-1)).reshape(b, n, c)
        return self.fc(t.mean(1))


class PositionalExpertsNet(StackedExpertsNet):
    """StackedExpertsNet's weights, but token t takes expert t mod E whatever the router says (the
    router only scales the output): the pattern of a mixture without its symmetry, since moving the
    experts moves which tokens each one reads."""

    def forward(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)
        b, n, c = t.shape
        h = self.norm(t).reshape(b * n, c)
        weight = torch.softmax(self.router(h), -1).max(-1).values
        expert = torch.arange(b * n) % self.experts
        y = torch.zeros_like(h)
        for e in range(self.experts):
            gate, up = F.linear(h, self.gate_up_proj[e]).chunk(2, -1)
            y = y + (expert == e).unsqueeze(-1) * F.linear(F.silu(gate) * up, self.down_proj[e])
        return self.fc((t + (y * weight.unsqueeze(-1)).reshape(b, n, c)).mean(1))


class BlurNet(nn.Module):
    """timm's anti-aliasing BlurPool: F.conv2d with a fixed kernel (a non-persistent buffer), one per
    channel. same_kernel=False gives each channel its own fixed kernel, which pins the channels."""

    def __init__(self, in_channels: int = 3, num_classes: int = 4, same_kernel: bool = True):
        super().__init__()
        self.a, self.b = nn.Conv2d(in_channels, 6, 3, padding=1), nn.Conv2d(6, 5, 3, padding=1)
        blur = torch.tensor([1.0, 2.0, 1.0])
        filt = (blur[:, None] * blur[None, :] / 16).expand(6, 1, 3, 3).clone()
        if not same_kernel:
            filt = filt * torch.arange(1.0, 7.0).view(6, 1, 1, 1)
        self.register_buffer("filt", filt, persistent=False)
        self.fc = nn.Linear(5, num_classes)

    def forward(self, x):
        x = F.conv2d(F.pad(torch.relu(self.a(x)), (1, 1, 1, 1), mode="reflect"), self.filt, stride=2, groups=6)
        return self.fc(torch.relu(self.b(x)).mean((2, 3)))


class ElementwiseZooNet(nn.Module):
    """Element-wise activations beyond the common ones (SELU, CELU and softsign modules, Apertus's
    expm1, log1p, log_sigmoid, hardshrink), a cumulative sum along the spatial axis (the channels
    keep their units) and `unflatten`. along_channels=True sums along the channels instead,
    which ties each one to those before it: they freeze."""

    def __init__(self, in_channels: int = 3, num_classes: int = 4, along_channels: bool = False):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(in_channels, 6, 3, padding=1), nn.Linear(6, 8), nn.Linear(8, 5)
        self.acts = nn.Sequential(nn.SELU(), nn.CELU(), nn.Softsign())
        self.fc = nn.Linear(5, num_classes)
        self.along_channels = along_channels

    def forward(self, x):
        x = self.acts(self.a(x)).flatten(2)  # (N, 6, H*W)
        x = torch.cumsum(x, dim=1 if self.along_channels else 2) / x.shape[2]
        x = x.unflatten(2, (-1, 2)).mean((2, 3))
        x = torch.expm1(F.hardshrink(self.b(x), 0.1)) + torch.log1p(self.b(x).abs())
        return self.fc(F.logsigmoid(self.c(x)))


class BatchHeadsAttentionNet(nn.Module):
    """Attention as fairseq-style code (XGLM, TrOCR) writes it: batch and heads merged into one axis
    for torch.bmm, (b x heads, n, d), and split again after."""

    def __init__(self, in_channels: int = 3, num_classes: int = 4, dim: int = 8, heads: int = 2):
        super().__init__()
        self.heads, self.d = heads, dim // heads
        self.embed = nn.Conv2d(in_channels, dim, 2, stride=2)
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)
        b, n, c = t.shape
        q, k, v = (p(t).view(b, n, self.heads, self.d).transpose(1, 2).reshape(b * self.heads, n, self.d) for p in (self.q, self.k, self.v))
        att = torch.bmm(torch.softmax(torch.bmm(q, k.transpose(1, 2)), -1), v)
        t = t + self.o(att.view(b, self.heads, n, self.d).transpose(1, 2).reshape(b, n, c))
        return self.fc(t.mean(1))


class InterleavedGLUNet(nn.Module):
    """A GLU MLP whose gate and up halves are interleaved unit by unit in one Linear's output, read
    as x[..., ::2] and x[..., 1::2] (gpt-oss's experts). mixed=True reads the gate as the first half
    instead, which no permutation of units in pairs keeps: the units freeze."""

    def __init__(self, in_channels: int = 3, num_classes: int = 4, dim: int = 8, hidden: int = 6, mixed: bool = False):
        super().__init__()
        self.embed, self.hidden, self.mixed = nn.Conv2d(in_channels, dim, 2, stride=2), hidden, mixed
        self.gate_up, self.down = nn.Linear(dim, 2 * hidden), nn.Linear(hidden, dim)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)
        h = self.gate_up(t)
        gate, up = h[..., : self.hidden] if self.mixed else h[..., ::2], h[..., 1::2]
        return self.fc((t + self.down(F.silu(gate) * (up + 1))).mean(1))


class HeadGateNet(nn.Module):
    """Attention whose heads are scaled by values that Linears compute from the input, one per head:
    an output gate (Laguna's g_proj) and a decay -exp(A_log) * softplus(a + dt_bias) on the queries
    (the gated linear attention of Qwen3.5 and OLMo-hybrid). shared=True: the same gates also scale
    a second attention's heads, which no permutation of either attention's heads keeps alone."""

    def __init__(self, in_channels: int = 3, num_classes: int = 4, dim: int = 8, heads: int = 4, shared: bool = False):
        super().__init__()
        self.heads, self.d = heads, dim // heads
        self.embed = nn.Conv2d(in_channels, dim, 2, stride=2)
        self.attentions = nn.ModuleList(nn.ModuleList(nn.Linear(dim, dim) for _ in range(4)) for _ in range(1 + shared))
        self.g_proj, self.a_proj = nn.Linear(dim, heads), nn.Linear(dim, heads, bias=False)
        self.dt_bias, self.A_log = nn.Parameter(torch.randn(heads)), nn.Parameter(torch.randn(heads))
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)
        b, n, c = t.shape
        gate = torch.sigmoid(self.g_proj(t))
        decay = -self.A_log.exp() * F.softplus(self.a_proj(t) + self.dt_bias)
        for q, k, v, o in self.attentions:
            q, k, v = (p(t).view(b, n, self.heads, self.d) for p in (q, k, v))
            att = torch.softmax(torch.einsum("bnhd,bmhd->bhnm", q * decay.unsqueeze(-1), k), -1)
            t = t + o((torch.einsum("bhnm,bmhd->bnhd", att, v) * gate.unsqueeze(-1)).reshape(b, n, c))
        return self.fc(t.mean(1))


@dataclasses.dataclass
class LogitsOutput:
    """What a Hugging Face model returns: logits behind an attribute."""

    logits: torch.Tensor


class OutputObjectNet(SmallNet):
    """SmallNet returning its logits in an output object, as a Hugging Face classifier does."""

    def forward(self, x):
        return LogitsOutput(super().forward(x))


class TokenLMNet(nn.Module):
    """A next-token model over token ids returning `LogitsOutput` (or, with as_dict, {"logits": ...}):
    logits (batch, tokens, vocab), one prediction per token."""

    def __init__(self, vocab: int = 13, dim: int = 6, hidden: int = 10, as_dict: bool = False):
        super().__init__()
        self.embed, self.up, self.down = nn.Embedding(vocab, dim), nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, vocab)
        self.as_dict = as_dict

    def forward(self, ids):
        h = self.embed(ids)
        h = h + self.down(torch.relu(self.up(h)))
        logits = self.head(self.norm(h))
        return {"logits": logits} if self.as_dict else LogitsOutput(logits)


class BareMLP(nn.Module):
    """Hidden Linears without biases and no norms: REPAIR has nowhere to put a correction."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, side: int = 8, width: int = 12):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * side * side, width, bias=False), nn.ReLU(),
                                 nn.Linear(width, width, bias=False), nn.ReLU(), nn.Linear(width, num_classes))

    def forward(self, x):
        return self.net(x)
