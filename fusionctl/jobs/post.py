"""Applying post-steps (BN reset, REPAIR) and fine-tuning to models described by config + state."""

from __future__ import annotations

from dataclasses import replace

import torch

from fusionctl.config import ModelConfig
from fusionctl.data import Splits
from fusionctl.errors import FusionctlError
from fusionctl.fusion.post import POST_STEPS, REPAIR_SAMPLES, aligned_references, repair_gaps
from fusionctl.fusion.units import bare_writers, unit_count
from fusionctl.jobs.bases import state_config
from fusionctl.models import (
    RECURRENT_MODELS,
    TRACED,
    build_from_state,
    build_model,
    describe,
    model_spec,
)


def post_defined(step: str, model_name: str) -> bool:
    """REPAIR corrects per-channel statistics of feed-forward layers; recurrent nets have no such place."""
    return not (step == "repair" and model_name in RECURRENT_MODELS)


def check_post(steps: list[str], model_name: str) -> None:
    for step in steps:
        if step not in POST_STEPS:
            raise FusionctlError(f"unknown post-step '{step}'; choose from: {', '.join(POST_STEPS)}")
        if not post_defined(step, model_name):
            raise FusionctlError("post=[repair] is defined for mlp, vgg11 and resnets, not recurrent models")


def check_repair(steps: list[str], cfg: ModelConfig, spec, state: dict) -> None:
    """Before fusing: a traced model's layers with no bias or norm for REPAIR's correction (repair_gaps)."""
    if "repair" in steps and cfg.name in TRACED:
        repair_gaps(spec, state, f"post=[repair] on {describe(cfg)}")


def repair_leaves(steps: list[str], cfg: ModelConfig, spec, state: dict) -> str:
    """For alignment.md: the layers post=[repair] leaves with the fused statistics (a traced model's
    writers with no bias and no norm after them; a built-in model gains biases), or ''."""
    left = bare_writers(spec, state) if "repair" in steps and cfg.name in TRACED else []
    return (f"\nREPAIR (post=[repair]) corrects {unit_count(spec) - len(left)} of {unit_count(spec)} layers; these have no bias "
            f"and no norm after them and keep the fused statistics: {', '.join(f'`{w}`' for w in left)}\n") if left else ""


def with_biases(cfg: ModelConfig, state: dict, splits: Splits) -> tuple[ModelConfig, dict]:
    """A bias-free model as the same function with zero biases (REPAIR without BN needs them)."""
    if cfg.bias:
        return cfg, state
    biased = replace(cfg, bias=True)
    template = build_model(biased, splits.input_shape, splits.num_classes, splits.vocab).state_dict()
    return biased, {k: state[k] if k in state else torch.zeros_like(v) for k, v in template.items()}


def apply_post(step: str, cfg: ModelConfig, state: dict, splits: Splits, references: list[dict], weights: list[float], device) -> tuple[ModelConfig, dict]:
    """Return (config, state) after `step`; references are the base states transported into `state`'s node order
    (or, for REPAIR, their statistics already measured: fusion.post.mapped_stats)."""
    spec = model_spec(cfg, splits.input_shape, splits.num_classes, splits.vocab)
    if step == "repair":
        cfg, state, references = repair_biases(cfg, state, references, spec, splits)
    model = build_from_state(cfg, splits, state, device)
    refs = [build_from_state(cfg, splits, r, device) if isinstance(r, dict) else r for r in references]
    POST_STEPS[step](model, spec, refs, weights, splits.train, device)
    return cfg, {k: v.detach().cpu() for k, v in model.state_dict().items()}


def reference_source(model_cfg: ModelConfig, splits: Splits, bases: list[dict], spec, device, variants=()):
    """couplings -> the aligned bases as REPAIR reads them on the training inputs (fusion.post.aligned_references);
    variants: the bases' configs, where a traced model's widths come from its constructor (jobs.bases.state_config)."""
    config = state_config(model_cfg, splits, variants)
    return aligned_references(lambda b: build_from_state(config(b), splits, b, device), bases, spec,
                              splits.train.x[:REPAIR_SAMPLES].to(device))


def repair_biases(cfg: ModelConfig, state: dict, references: list[dict], spec, splits: Splits):
    """REPAIR puts a layer's correction in the norm after it, or else in its bias: a bias-free
    built-in model gains (zero) biases; a traced one is corrected where it has them (check_repair
    said where not). The spec names each unit's writer and norm, and the state shows which writers
    have a bias: no model is built."""
    if not bare_writers(spec, state) or cfg.name in TRACED:
        return cfg, state, references
    return (*with_biases(cfg, state, splits), [with_biases(cfg, r, splits)[1] if isinstance(r, dict) else r for r in references])
