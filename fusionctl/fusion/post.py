"""Post-steps on a fused or interpolated network: BatchNorm reset and REPAIR.

REPAIR (Jordan et al., ICLR 2023): after merging, each channel's pre-activation statistics
collapse; restore them to the lambda-weighted mix of the (aligned) base networks' statistics
with an affine correction, folded into the BatchNorm that follows a layer or, without
BatchNorm, into the layer's own weight and bias (a bias-free network gains biases).
"""

from __future__ import annotations

import torch
from torch import nn

from fusionctl.data import Split

POST_STEPS = ("bn_reset", "repair")


def bn_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def reset_bn_stats(model: nn.Module, split: Split, batches: int = 10, batch_size: int = 256, device="cpu") -> None:
    """Recompute BatchNorm running statistics (exact average) on the first training batches."""
    bns = bn_layers(model)
    if not bns:
        return
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average instead of an exponential one
    model.train()
    for b in range(batches):
        x = split.x[b * batch_size : (b + 1) * batch_size]
        if len(x) == 0:
            break
        model(x.to(device))
    for m, mom in zip(bns, momenta):
        m.momentum = mom
    model.eval()


def repair_points(model: nn.Module) -> list[tuple[nn.Module, nn.Module | None]]:
    """(layer, BatchNorm after it or None) for every layer whose outputs are hidden units."""
    points = []
    if hasattr(model, "layers"):  # mlp
        points = [(layer, None) for layer in model.layers[:-1]]
    elif hasattr(model, "convs"):  # vgg11
        bns = model.bns if model.bns is not None else [None] * len(model.convs)
        points = [(c, b) for c, b in zip(model.convs, bns)] + [(fc, None) for fc in model.fcs[:-1]]
    elif hasattr(model, "stem"):  # resnets
        points = [(model.stem, model.stem_bn)]
        for block in model.blocks:
            points += [(block.conv1, block.bn1), (block.conv2, block.bn2)]
            if block.shortcut is not None:
                points.append((block.shortcut, block.shortcut_bn))
        points = [(layer, bn if isinstance(bn, nn.modules.batchnorm._BatchNorm) else None) for layer, bn in points]
    else:
        raise ValueError(f"REPAIR is not defined for {type(model).__name__}; use it with mlp, vgg11 or resnets")
    return points


def capture_outputs(model: nn.Module, modules: list[nn.Module], x: torch.Tensor) -> list[torch.Tensor]:
    """The outputs of `modules` during one evaluation-mode forward pass of `model` on x."""
    captured: dict[int, torch.Tensor] = {}
    hooks = [m.register_forward_hook(lambda mod, inp, out, i=i: captured.__setitem__(i, out.detach())) for i, m in enumerate(modules)]
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        for h in hooks:
            h.remove()
    return [captured[i] for i in range(len(modules))]


def channel_stats(model: nn.Module, modules: list[nn.Module], x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per-channel mean and std of each module's output on inputs x."""
    stats = []
    for out in capture_outputs(model, modules, x):
        flat = out.transpose(0, 1).reshape(out.shape[1], -1)
        stats.append((flat.mean(1), flat.std(1)))
    return stats


def target_stats(models: list[nn.Module], weights: list[float], x: torch.Tensor):
    """lambda-weighted means and stds of the aligned base models at every repair point."""
    per_model = [channel_stats(m, [bn or layer for layer, bn in repair_points(m)], x) for m in models]
    return [
        (sum(w * s[p][0] for s, w in zip(per_model, weights)), sum(w * s[p][1] for s, w in zip(per_model, weights)))
        for p in range(len(per_model[0]))
    ]


@torch.no_grad()
def repair(model: nn.Module, targets, x: torch.Tensor, eps: float = 1e-5) -> None:
    """Correct `model` in place in one forward pass: each point's hook measures its channels,
    folds the affine correction into the parameters and passes the corrected output on, so
    every later point sees the statistics its predecessors were fixed to."""

    def hook_for(layer, bn, mu_t, sd_t):
        def hook(module, inputs, out):
            flat = out.transpose(0, 1).reshape(out.shape[1], -1)
            mu, sd = flat.mean(1), flat.std(1)
            scale = sd_t / (sd + eps)
            if bn is not None:
                bn.weight.mul_(scale)
                bn.bias.copy_((bn.bias - mu) * scale + mu_t)
            else:
                if layer.bias is None:
                    raise ValueError("REPAIR without BatchNorm needs biases; build the model with bias=True")
                layer.weight.mul_(scale.view((-1,) + (1,) * (layer.weight.dim() - 1)))
                layer.bias.copy_((layer.bias - mu) * scale + mu_t)
            shape = (1, -1) + (1,) * (out.dim() - 2)
            return (out - mu.view(shape)) * scale.view(shape) + mu_t.view(shape)

        return hook

    hooks = [(bn or layer).register_forward_hook(hook_for(layer, bn, mu_t, sd_t)) for (layer, bn), (mu_t, sd_t) in zip(repair_points(model), targets)]
    try:
        model.eval()(x)
    finally:
        for h in hooks:
            h.remove()
