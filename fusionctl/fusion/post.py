"""Post-steps on a fused or interpolated network: BatchNorm reset and REPAIR.

REPAIR (Jordan et al., ICLR 2023): after merging, each channel's pre-activation statistics
collapse; restore them to the lambda-weighted mix of the (aligned) base networks' statistics
with an affine correction, folded into the BatchNorm that follows a layer or, without
BatchNorm, into the layer's own weight and bias (a bias-free built-in network gains biases; a
user's layer with neither keeps its fused statistics, and `repair_gaps` says which).
"""

from __future__ import annotations

import logging
from typing import Callable

import torch
from torch import nn

from fusionctl.data import Split
from fusionctl.errors import FusionctlError
from fusionctl.fusion.transport import maps_statistics, permutation_index, transport
from fusionctl.fusion.units import (
    bare,
    bare_writers,
    capture_outputs,
    first_output,
    hooks_fire,
    output_layer,
    point_axis,
    repair_points,
    unit_count,
    units_first,
)
from fusionctl.models.op_kinds import weight_out_axis
from fusionctl.models.spec import AlignmentSpec
from fusionctl.ot.permutation import Merge

log = logging.getLogger(__name__)


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


def channel_stats(model: nn.Module, points, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per-channel mean and std of each repair point's output (its norm's, or its writer's) on inputs x."""
    stats = []
    for (layer, bn, rows), out in zip(points, capture_outputs(model, [bn or layer for layer, bn, _ in points], x)):
        flat = units_first(out, point_axis(layer, bn))[rows]
        stats.append((flat.mean(1), flat.std(1)))
    return stats


def unit_stats(model: nn.Module, spec: AlignmentSpec, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per repair point (in repair_points' order) the per-unit mean and std on inputs x."""
    return channel_stats(model, repair_points(model, spec), x)


def mapped_stats(stats, spec: AlignmentSpec, couplings: dict):
    """A model's unit_stats in the fused order: unit j of a group takes unit index[j]'s under a
    permutation (what its permuted copy would measure), Q @ stats under a merge (ot.permutation.Merge:
    a fused unit's lambda-weighted share of its members' means and stds)."""
    groups = [g for g in spec.groups for _ in spec.units.get(g, ())]

    def move(v: torch.Tensor, p) -> torch.Tensor:
        return p.dense(v.dtype).to(v.device) @ v if isinstance(p, Merge) else v[permutation_index(p).to(v.device)]

    return [(move(mu, couplings[g]), move(sd, couplings[g])) for (mu, sd), g in zip(stats, groups)]


def aligned_references(build: Callable[[dict], nn.Module], bases: list[dict], spec: AlignmentSpec, x: torch.Tensor):
    """couplings -> the aligned bases as REPAIR reads them (references for `repair_step` on inputs x).
    When every coupling is a permutation or a merge, each base's unit statistics are measured once
    on x in its own order (`build` makes its module) and mapped (mapped_stats), since a permuted base
    measures its units permuted; otherwise the base states are transported by the couplings."""
    measured: list = []

    def references(couplings, aligned=None) -> list:
        """aligned: the bases already transported by these couplings (FusionResult.aligned), if known."""
        if any(not maps_statistics(p) for per_base in couplings for p in per_base.values()):
            return aligned if aligned is not None else [transport(b, spec, c) for b, c in zip(bases, couplings)]
        if not measured:
            measured.extend(unit_stats(build(b), spec, x) for b in bases)
        return [mapped_stats(s, spec, c) for s, c in zip(measured, couplings)]

    return references


def target_stats(models: list, spec: AlignmentSpec, weights: list[float], x: torch.Tensor):
    """lambda-weighted means and stds of the aligned base models at every repair point. A model
    may come as its statistics already measured on x (a unit_stats list), e.g. mapped_stats of a base."""
    per_model = [m if isinstance(m, list) else unit_stats(m, spec, x) for m in models]
    return [
        (sum(w * s[p][0] for s, w in zip(per_model, weights)), sum(w * s[p][1] for s, w in zip(per_model, weights)))
        for p in range(len(per_model[0]))
    ]


@torch.no_grad()
def repair(model: nn.Module, spec: AlignmentSpec, targets, x: torch.Tensor, eps: float = 1e-5) -> None:
    """Correct `model` in place in one forward pass: each point's hook measures its channels,
    folds the affine correction into the parameters and passes the corrected output on, so
    every later point sees the statistics its predecessors were fixed to. A point with no bias to
    take the correction (units.bare; repair_gaps said which) keeps the fused statistics."""

    def hook_for(layer, bn, rows, mu_t, sd_t):
        axis = point_axis(layer, bn)

        def hook(module, inputs, outputs):
            out = first_output(outputs)
            start, stop, _ = rows.indices(out.shape[axis])
            flat = units_first(out, axis)[rows]
            mu, sd = flat.mean(1), flat.std(1)
            scale = sd_t / (sd + eps)
            if bn is not None:
                bn.weight[rows].mul_(scale)
                bn.bias[rows] = (bn.bias[rows] - mu) * scale + mu_t
            else:
                writes = output_layer(layer)
                shape, out_axis = [1] * writes.weight.dim(), weight_out_axis(writes)
                shape[out_axis] = -1
                writes.weight.narrow(out_axis, start, stop - start).mul_(scale.view(shape))
                writes.bias[rows] = (writes.bias[rows] - mu) * scale + mu_t
            shape = [1] * out.dim()
            shape[axis] = -1
            fixed = (out.narrow(axis, start, stop - start) - mu.view(shape)) * scale.view(shape) + mu_t.view(shape)
            if stop - start < out.shape[axis]:  # a writer's other channels are another group's, corrected by their own point
                fixed = torch.cat([out.narrow(axis, 0, start), fixed, out.narrow(axis, stop, out.shape[axis] - stop)], axis)
            return (fixed, *outputs[1:]) if isinstance(outputs, tuple) else fixed

        return hook

    state = model.state_dict()
    units = [u for g in spec.groups for u in spec.units.get(g, ())]  # repair_points' order
    points = [(p, t) for p, t, u in zip(repair_points(model, spec), targets, units) if not bare(u, state)]
    hooks = [(bn or layer).register_forward_hook(hook_for(layer, bn, rows, mu_t, sd_t)) for (layer, bn, rows), (mu_t, sd_t) in points]
    try:
        with hooks_fire():
            model.eval()(x)
    finally:
        for h in hooks:
            h.remove()


REPAIR_SAMPLES = 512  # training inputs REPAIR measures statistics on


def repair_gaps(spec: AlignmentSpec, state: dict, step: str) -> None:
    """Before fusing: one line where REPAIR has no layer to correct in (LLaMA's bias-free Linears and
    RMSNorms); a warning naming the layers it leaves as fused (GPT-2's embeddings), since it corrects
    the others. `step`: how the caller names the post-step (post=[repair], post="repair")."""
    left, total = bare_writers(spec, state), unit_count(spec)
    if not left:
        return
    if len(left) == total:
        raise FusionctlError(f"{step} corrects a layer's statistics in its bias or in the norm after it; no layer of this model has "
                             "either; fuse without it (bn_reset resets BatchNorms only) or give the layers a bias")
    names = f"{', '.join(left[:3])}{f' and {len(left) - 3} more' if len(left) > 3 else ''}"
    one = len(left) == 1
    log.warning("%s corrects %d of %d layers; %s %s no bias and no norm after %s and keep%s the fused statistics", step,
                total - len(left), total, names, "has" if one else "have", "it" if one else "them", "s" if one else "")


def bn_reset_step(model: nn.Module, spec: AlignmentSpec, references: list[nn.Module], weights: list[float], data: Split, device="cpu") -> None:
    reset_bn_stats(model, data, device=device)


def repair_step(model: nn.Module, spec: AlignmentSpec, references: list[nn.Module], weights: list[float], data: Split, device="cpu") -> None:
    """BN statistics reset, then REPAIR towards the lambda-mix of the (aligned) references' statistics."""
    reset_bn_stats(model, data, device=device)
    x = data.x[:REPAIR_SAMPLES].to(device)
    repair(model, spec, target_stats(references, spec, weights, x), x)


def scoring_step(state: dict, can_repair: bool) -> str | None:
    """The post-step solver.cost=auto scores each candidate fusion after, so candidates compare as they
    will be used: BN reset for BN nets (their stored statistics no longer fit the fused units), else
    REPAIR where the caller says it has a layer to correct in, else none."""
    if any(k.endswith("running_mean") for k in state):
        return "bn_reset"
    return "repair" if can_repair else None


# post-step -> (model, spec, aligned references, lambdas, training data) -> None, in place
POST_STEPS = {"bn_reset": bn_reset_step, "repair": repair_step}
READS_REFERENCES = frozenset({"repair"})  # the steps that read the aligned references (BN reset reads none)
