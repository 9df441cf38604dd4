"""Unit activations per alignment group on a fixed batch of training inputs.

A group's units are written by the layers whose weight rows it indexes (several for a residual
stream); their outputs before any BatchNorm or nonlinearity are stacked as observations of the
same units. Every model is probed at the same place, so costs compare like with like.
"""

from __future__ import annotations

import torch
from torch import nn

from fusionctl.config import ModelConfig
from fusionctl.data import Splits
from fusionctl.fusion.post import capture_outputs
from fusionctl.jobs.bases import build_from_state
from fusionctl.models import config_for, model_spec
from fusionctl.models.recurrent import RecurrentLayer, TokenEmbedding


def writers(model: nn.Module, spec) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {g: [] for g in spec.groups}
    for key, axes in spec.axes.items():
        if not axes or axes[0] is None or not key.endswith(("weight", "weight_ih")):
            continue
        name = key.rsplit(".", 1)[0]
        module = model.get_submodule(name)
        if isinstance(module, nn.modules.batchnorm._BatchNorm) or name in out[axes[0].group]:
            continue
        out[axes[0].group].append(name)
    return out


def unit_activations(model: nn.Module, spec, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """{group: (n_units, observations)} pre-activations of every group on inputs x."""
    names = writers(model, spec)
    flat_names = [n for group_names in names.values() for n in group_names]
    captured = dict(zip(flat_names, capture_outputs(model, [model.get_submodule(n) for n in flat_names], x)))
    acts = {}
    for group, group_names in names.items():
        blocks = []
        for name in group_names:
            out = captured[name]
            if isinstance(model.get_submodule(name), (RecurrentLayer, TokenEmbedding)):
                out = out.movedim(-1, 1)  # (B, T, n) -> (B, n, T)
            blocks.append(out.transpose(0, 1).reshape(out.shape[1], -1))
        acts[group] = torch.cat(blocks, 1).to(torch.float64).cpu()
    return acts


def activation_probe(model_cfg: ModelConfig, splits: Splits, samples: int, device="cpu"):
    """A function state -> activations, for states of `model_cfg`'s architecture (any widths)."""
    x = splits.train.x[:samples].to(device)
    spec = model_spec(model_cfg)

    def probe(state: dict) -> dict[str, torch.Tensor]:
        model = build_from_state(config_for(model_cfg, state), splits, state, device)
        return unit_activations(model, spec, x)

    return probe
