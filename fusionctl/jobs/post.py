"""Applying post-steps (BN reset, REPAIR) and fine-tuning to models described by config + state."""

from __future__ import annotations

from dataclasses import replace

import torch

from fusionctl.config import ModelConfig
from fusionctl.data import Splits
from fusionctl.errors import FusionctlError
from fusionctl.fusion.post import POST_STEPS, repair, reset_bn_stats, target_stats
from fusionctl.fusion.units import repair_points
from fusionctl.models import build_from_state
from fusionctl.models import TRACED, build_model, describe, model_spec

REPAIR_SAMPLES = 512


def post_defined(step: str, model_name: str) -> bool:
    return not (step == "repair" and model_name in ("rnn", "lstm", "gru"))


def check_post(steps: list[str], model_name: str) -> None:
    for step in steps:
        if step not in POST_STEPS:
            raise FusionctlError(f"unknown post-step '{step}'; choose from: {', '.join(POST_STEPS)}")
        if not post_defined(step, model_name):
            raise FusionctlError("post=[repair] is defined for mlp, vgg11 and resnets, not recurrent models")


def with_biases(cfg: ModelConfig, state: dict, splits: Splits) -> tuple[ModelConfig, dict]:
    """A bias-free model as the same function with zero biases (REPAIR without BN needs them)."""
    if cfg.bias:
        return cfg, state
    biased = replace(cfg, bias=True)
    template = build_model(biased, splits.input_shape, splits.num_classes, splits.vocab).state_dict()
    return biased, {k: state[k] if k in state else torch.zeros_like(v) for k, v in template.items()}


def apply_post(step: str, cfg: ModelConfig, state: dict, splits: Splits, references: list[dict], weights: list[float], device) -> tuple[ModelConfig, dict]:
    """Return (config, state) after `step`; references are the base states transported into `state`'s node order."""
    model = build_from_state(cfg, splits, state, device)
    if step == "bn_reset":
        reset_bn_stats(model, splits.train, device=device)
        return cfg, {k: v.detach().cpu() for k, v in model.state_dict().items()}
    # repair: BatchNorm statistics are reset first; layers with no norm after them take the
    # correction in their bias, so a bias-free built-in model gains (zero) biases
    spec = model_spec(cfg, splits.input_shape, splits.num_classes, splits.vocab)
    bare = [layer for layer, norm in repair_points(model, spec) if norm is None and getattr(layer, "bias", None) is None]
    if bare and cfg.name in TRACED:
        names = [n for n, m in model.named_modules() if any(m is b for b in bare)]
        raise FusionctlError(f"post=[repair] corrects a layer in its norm or bias; {', '.join(names[:3])} of {describe(cfg)} has neither; "
                             "use post=[bn_reset] or give those layers a bias")
    if bare:
        references = [with_biases(cfg, r, splits)[1] for r in references]
        cfg, state = with_biases(cfg, state, splits)
        model = build_from_state(cfg, splits, state, device)
    reset_bn_stats(model, splits.train, device=device)
    x = splits.train.x[:REPAIR_SAMPLES].to(device)
    refs = [build_from_state(cfg, splits, r, device) for r in references]
    repair(model, spec, target_stats(refs, spec, weights, x), x)
    return cfg, {k: v.detach().cpu() for k, v in model.state_dict().items()}
