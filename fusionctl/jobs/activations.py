"""Unit activations per alignment group on the first training inputs.

A group's units are written by the layers whose weight rows it indexes (several for a residual
stream); their outputs before any BatchNorm or nonlinearity are stacked as observations of the
same units. Every model is probed at the same place, so costs compare like with like; the
activations are streamed batch by batch into z-scored features (fusion/features.py).
"""

from __future__ import annotations

import torch
from torch import nn

from fusionctl.config import ModelConfig
from fusionctl.data import Splits
from fusionctl.fusion.features import CorrelationFeatures
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
        acts[group] = torch.cat(blocks, 1)
    return acts


def activation_probe(model_cfg: ModelConfig, splits: Splits, device="cpu", batch_size: int = 64):
    """A function (states, samples) -> per state {group: (n, d) z-scored features}, for states of
    `model_cfg`'s architecture (any widths), streamed over the first `samples` training inputs."""
    spec = model_spec(model_cfg)

    def probe(states: list[dict], samples: int) -> list[dict[str, torch.Tensor]]:
        models = [build_from_state(config_for(model_cfg, s), splits, s, device) for s in states]
        x_all = splits.train.x[:samples]
        streams: dict[str, CorrelationFeatures] = {}
        for start in range(0, len(x_all), batch_size):
            x = x_all[start : start + batch_size].to(device)
            per_model = [unit_activations(m, spec, x) for m in models]
            for group in spec.groups:
                if group not in streams:
                    streams[group] = CorrelationFeatures([a[group].shape[0] for a in per_model])
                streams[group].add([a[group] for a in per_model])
        feats = {g: [f.cpu() for f in stream.features()] for g, stream in streams.items()}
        return [{g: feats[g][i] for g in spec.groups} for i in range(len(states))]

    return probe
