"""`fusionctl fuse`: fuse the base models with the chosen solver and the baselines, evaluate all."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, fields
from pathlib import Path

import pandas as pd
import torch.nn.functional as F

from fusionctl.config import (
    FuseCommandConfig,
    ModelConfig,
    SolverSettings,
    solver_settings,
)
from fusionctl.data import Split, Splits, load_for
from fusionctl.device import ot_device, resolve_device
from fusionctl.errors import FusionctlError
from fusionctl.eval.metrics import evaluate_with_proba, held_out_scores
from fusionctl.fusion import METHODS, FusionContext, FusionResult, check_widths, fuse
from fusionctl.fusion.engine import HeldOut
from fusionctl.fusion.post import READS_REFERENCES, REPAIR_SAMPLES, scoring_step
from fusionctl.fusion.units import repairable
from fusionctl.jobs.activations import activation_probe
from fusionctl.jobs.bases import (
    Base,
    fusion_weights,
    load_bases,
    spec_for,
    target_config,
    target_sizes,
)
from fusionctl.jobs.post import apply_post, check_post, check_repair, post_defined, reference_source, repair_leaves
from fusionctl.models import TRACED, architecture, build_from_state, config_for, random_target_factory
from fusionctl.models.spec_report import alignment_report
from fusionctl.ot.permutation import Permutation, dense
from fusionctl.plots import fusion_figure, save
from fusionctl.store import make_checkpoint, save_atomic, write_csv_atomic, write_text_atomic
from fusionctl.training import check_optim, finetune
from fusionctl.versions import versions

log = logging.getLogger(__name__)

@dataclass
class Fused:
    method: str
    result: FusionResult
    model_cfg: ModelConfig
    seconds: float
    settings_label: str = "defaults"  # settings that differ from the method's defaults
    settings: SolverSettings | None = None

def prepare(cfg: FuseCommandConfig):
    """Data, base models, spec, lambdas and target sizes: everything a fusion needs."""
    for name in [cfg.solver.name, *cfg.baselines]:
        if name not in METHODS:
            raise FusionctlError(f"unknown solver '{name}'; choose from: {', '.join(METHODS)}")
    check_post(cfg.post, cfg.model.name)
    if cfg.finetune.epochs < 0:
        raise FusionctlError(f"finetune.epochs must be >= 0, got {cfg.finetune.epochs}")
    if cfg.finetune.epochs:
        if cfg.finetune.batch_size < 1:
            raise FusionctlError(f"finetune.batch_size must be >= 1, got {cfg.finetune.batch_size}")
        check_optim(cfg.finetune.optim, "finetune.optim")
    splits = load_for(cfg)
    bases = load_bases(cfg, splits)
    spec = spec_for(bases[0].model_cfg, splits, cfg.spec_check)
    check_repair(cfg.post, bases[0].model_cfg, spec, bases[0].state)
    lambdas = fusion_weights(cfg.weights, len(bases))
    target = target_config(cfg.target, bases[0], splits, spec)
    return splits, bases, spec, lambdas, target

SCORE_SAMPLES = 5000


def scoring_split(splits: Splits, skip: int) -> Split:
    """The inputs solver.cost=auto scores its candidates on: up to SCORE_SAMPLES of the last training
    inputs after the first `skip` (those the activation probe and REPAIR read), else the validation split.
    Training inputs rather than the validation split: in 55 fusions measured (docs/results/reading.md,
    MLPs, CNNs and RNNs), the candidate more accurate on 3,000-6,000 of them was the better on the test
    set in 50, missing by 2.5 points in all; the validation split (400 or 2,000) chose wrong in 17 (22.4)."""
    rest = Split(splits.train.x[skip:], splits.train.y[skip:])
    if len(rest):
        return rest.tail(SCORE_SAMPLES)
    return (splits.val if len(splits.val) else splits.train).head(SCORE_SAMPLES)


def held_out_score(model_cfg: ModelConfig, splits: Splits, bases: list[dict], spec, lambdas, device, references=None, variants=(),
                   skip: int = REPAIR_SAMPLES):
    """How solver.cost=auto chooses: a fused model's per-example loss and accuracy (engine.HeldOut) on
    the scoring inputs (scoring_split: training inputs the alignment and REPAIR did not read) after the
    post-step its family needs anyway — BatchNorm reset for BN nets (their stored statistics are
    averages that no longer fit the units), REPAIR for other feed-forward nets that have a bias or norm
    to correct in — so candidates are compared as they will be used.
    `references`: a reference_source to share (the fuse command's, so the bases are measured once);
    `variants`: the bases' configs (a traced model's widths are its constructor's); `skip`: the
    training inputs the probe and REPAIR read (the first)."""
    held = scoring_split(splits, skip)
    step = score_step(model_cfg, spec, bases[0])

    references = references or reference_source(model_cfg, splits, bases, spec, device, variants)

    def score(result) -> float:
        cfg, state = config_for(model_cfg, result.state), result.state
        if step:
            cfg, state = apply_post(step, cfg, state, splits, references(result.couplings, result.aligned) if step in READS_REFERENCES else [], lambdas, device)
        return HeldOut(*held_out_scores(build_from_state(cfg, splits, state, device), held, device=device))

    return score


def score_step(model_cfg: ModelConfig, spec, state: dict) -> str | None:
    """The post-step held_out_score applies before it evaluates (fusion.post.scoring_step)."""
    # a built-in model gains biases for REPAIR (jobs.post.repair_biases); a traced one needs a bias or norm (not LLaMA's Linears)
    can_repair = post_defined("repair", model_cfg.name) and (model_cfg.name not in TRACED or repairable(spec, state))
    return scoring_step(state, can_repair)


def settings_for(method: str, cfg: FuseCommandConfig) -> SolverSettings:
    """The main solver's settings as configured; a baseline's are its own defaults."""
    return cfg.solver if method == cfg.solver.name else solver_settings(method)


def describe(settings: SolverSettings) -> str:
    """The settings that differ from the method's defaults, e.g. 'sweeps=0 cost=weight' ('defaults' if none)."""
    default = type(settings)()
    changed = [f"{f.name}={getattr(settings, f.name)}" for f in fields(settings) if getattr(settings, f.name) != getattr(default, f.name)]
    return " ".join(changed) or "defaults"


def run_method(method: str, cfg: FuseCommandConfig, splits: Splits, bases: list[Base], spec, lambdas, target_cfg: ModelConfig,
               references=None) -> Fused:
    sizes = target_sizes(target_cfg, splits)
    settings = settings_for(method, cfg)
    device = resolve_device(cfg.device)
    configs = [b.model_cfg for b in bases]
    ctx = FusionContext(random_target_factory(target_cfg, splits, getattr(settings, "seed", 0)),
                        activation_probe(configs[0], splits, device, variants=[*configs, target_cfg]),
                        held_out_score(target_cfg, splits, [b.state for b in bases], spec, lambdas, device, references, configs,
                                       max(REPAIR_SAMPLES, getattr(settings, "act_samples", 0))), ot_device(device),
                        score_after=score_step(target_cfg, spec, bases[0].state))
    start = time.perf_counter()
    result = fuse(method, spec, [b.state for b in bases], lambdas, sizes, settings, ctx)
    seconds = time.perf_counter() - start
    stuck = [g for g, info in result.info.items() if not info["converged"]]
    if stuck and method in ("wb", "gwb"):
        log.warning("%s: the layer-wise pass did not converge for %s in solver.max_iter=%d rounds; raise solver.max_iter",
                    method, ", ".join(stuck), settings.max_iter)
    unconverged = sum(i.get("unconverged_solves", 0) for i in result.info.values()) + result.sweeps.get("unconverged_solves", 0)
    if unconverged:
        log.warning("%s: %d sinkhorn solves stopped at solver.sinkhorn_iter=%d before their marginals met the tolerance; "
                    "raise solver.sinkhorn_iter or solver.reg", method, unconverged, settings.sinkhorn_iter)
    done = result.sweeps  # no sweeps (solver.sweeps=0) and no choice of cost (cost=auto) leave their keys out
    sweeps = f", {done['sweeps']} sweeps, objective {done['objective_start']:.4g} -> {done['objective']:.4g}" if "sweeps" in done else ""
    sweeps += f", cost={done['selected_cost']} kept" if "selected_cost" in done else ""
    log.info("%s (%s) fused %d models in %.2fs%s", method, describe(settings), len(bases), seconds, sweeps)
    return Fused(method, result, target_cfg, seconds, describe(settings), settings)


def save_fused(fused: Fused, splits: Splits, bases: list[Base], lambdas, out_dir: Path) -> None:
    ckpt = make_checkpoint(fused.result.state, fused.model_cfg, splits.name, splits.input_shape, splits.num_classes, vocab=splits.vocab,
                           method=fused.method, bases=[str(b.path) for b in bases], weights=list(lambdas))
    save_atomic(ckpt, out_dir / f"fused_{fused.method}.pt")
    save_atomic(
        # a permutation as its index (source node per target node), a soft coupling as its matrix, a merge as its rows' map
        {"format": "fusionctl.couplings/2", "method": fused.method, "bases": [str(b.path) for b in bases],
         "couplings": [{g: (p.index if isinstance(p, Permutation) else dense(p)).cpu() for g, p in c.items()} for c in fused.result.couplings]},
        out_dir / f"couplings_{fused.method}.pt",
    )


def run_fuse(cfg: FuseCommandConfig, out_dir: Path) -> pd.DataFrame:
    splits, bases, spec, lambdas, target_cfg = prepare(cfg)
    sizes = target_sizes(target_cfg, splits)
    device = resolve_device(cfg.device)
    methods = list(dict.fromkeys([cfg.solver.name, *cfg.baselines]))
    check_widths(cfg.solver.name, spec, [b.state for b in bases], sizes)  # before any work
    if any(spec.group_sizes(b.state) != sizes for b in bases):
        for method in [m for m in methods[1:] if METHODS[m].equal_widths]:
            log.info("skipping the %s baseline: it needs the base and target widths to be equal, and they differ", method)
            methods.remove(method)
    rows = []

    def evaluate_rows(model, role, method, seed, post="none", stage="one-shot", seconds=0.0, fused=None, probs=None):
        """One row per split; `probs`, if given, collects the class probabilities per split (the ensemble's)."""
        label = {"settings": fused.settings_label, "ot": getattr(fused.settings, "ot", ""), "reg": getattr(fused.settings, "reg", float("nan"))} \
            if fused else {"settings": "", "ot": "", "reg": float("nan")}
        for split_name in ("train", "test"):
            name = f"{method} {seed}" if role == "base" else method + ("" if post == "none" else f" +{post}") + ("" if stage == "one-shot" else f" ({stage})")
            loss, acc, p = evaluate_with_proba(model, getattr(splits, split_name), device=device, keep_proba=probs is not None,
                                               desc=f"evaluate {name} on {split_name}")
            if probs is not None:
                probs[split_name].append(p)
            rows.append({"role": role, "method": method, "seed": seed, "split": split_name, "accuracy": acc, "loss": loss,
                         "post": post, "stage": stage, "fuse_time_s": seconds, **label})

    probs = {"train": [], "test": []}
    for b in bases:
        evaluate_rows(build_from_state(b.model_cfg, splits, b.state, device), "base", "base", b.label, probs=probs)
    for split_name in ("train", "test"):
        p = sum(w * q for w, q in zip(lambdas, probs[split_name]))
        y = getattr(splits, split_name).y
        rows.append({"role": "ensemble", "method": "ensemble", "seed": "all", "split": split_name, "post": "none", "stage": "one-shot",
                     "accuracy": float((p.argmax(1) == y).float().mean()), "loss": float(F.nll_loss(p.clamp_min(1e-12).log(), y)), "fuse_time_s": 0.0,
                     "settings": "", "ot": "", "reg": float("nan")})
    report = alignment_report(spec, bases[0].state) + repair_leaves(cfg.post, bases[0].model_cfg, spec, bases[0].state)
    write_text_atomic(report, out_dir / "alignment.md")
    log.info("what is aligned, group by group: %s", out_dir / "alignment.md")
    label = "+".join(b.label for b in bases)
    aligned = reference_source(bases[0].model_cfg, splits, [b.state for b in bases], spec, device, [b.model_cfg for b in bases])
    for method in methods:
        fused = run_method(method, cfg, splits, bases, spec, lambdas, target_cfg, aligned)
        save_fused(fused, splits, bases, lambdas, out_dir)
        evaluate_rows(build_from_state(fused.model_cfg, splits, fused.result.state, device), "fused", method, label, seconds=fused.seconds, fused=fused)
        references = aligned(fused.result.couplings, fused.result.aligned) if READS_REFERENCES.intersection(cfg.post) else []
        for step in cfg.post:
            post_cfg, post_state = apply_post(step, fused.model_cfg, fused.result.state, splits, references, lambdas, device)
            evaluate_rows(build_from_state(post_cfg, splits, post_state, device), "fused", method, label, post=step, seconds=fused.seconds, fused=fused)
        if cfg.finetune.epochs:
            model = build_from_state(fused.model_cfg, splits, fused.result.state, device)
            finetune(model, splits, cfg.finetune.optim, cfg.finetune.epochs, cfg.finetune.batch_size, cfg.finetune.seed, device)
            evaluate_rows(model, "fused", method, label, stage="finetuned", seconds=fused.seconds, fused=fused)
    if cfg.finetune.epochs and cfg.finetune.bases:
        for b in bases:
            model = build_from_state(b.model_cfg, splits, b.state, device)
            finetune(model, splits, cfg.finetune.optim, cfg.finetune.epochs, cfg.finetune.batch_size, cfg.finetune.seed, device)
            evaluate_rows(model, "base", "base", b.label, stage="finetuned")
    traced = target_cfg.name in TRACED  # its widths are its own group sizes, not model.widths
    widths = list(sizes.values()) if traced else target_cfg.widths
    meta = {"K": len(bases), "target_widths": str(widths),
            "weights": str([round(w, 4) for w in lambdas]), "dataset": splits.name, "model": bases[0].model_cfg.name}
    table = pd.DataFrame([{**r, **meta, **versions()} for r in rows])
    write_csv_atomic(table, out_dir / "fusion.csv")
    save(fusion_figure(table, f"{splits.name}, {architecture(bases[0].model_cfg)}: {len(bases)} models fused"), out_dir / "fusion")
    return table


def summary(table: pd.DataFrame) -> str:
    """Accuracy (%) per model on train and test, and fuse time."""
    base = table["seed"].astype(str).map(lambda s: f"base seed {s}" if s.isdigit() else f"base {s}")  # a seed, or the file of models=[...]
    name = table["method"].where(table["role"] != "base", base)
    name = name + table["post"].map(lambda p: "" if p == "none" else f" +{p}")
    name = name + table["stage"].map(lambda s: "" if s == "one-shot" else f" ({s})")
    t = table.assign(model=name)
    wide = t.pivot_table(index="model", columns="split", values="accuracy", sort=False) * 100
    wide["fuse_s"] = t.groupby("model", sort=False)["fuse_time_s"].max()
    return wide[["train", "test", "fuse_s"]].round(2).to_string()
