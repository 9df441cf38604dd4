"""`fusionctl fuse`: fuse the base models with the chosen solver and the baselines, evaluate all."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd
import torch.nn.functional as F

from fusionctl.config import FuseCommandConfig, ModelConfig
from fusionctl.data import Splits, load_dataset
from fusionctl.device import resolve_device
from fusionctl.errors import FusionctlError
from fusionctl.eval.metrics import evaluate, predict_proba
from fusionctl.fusion import METHODS, FusionResult, fuse
from fusionctl.jobs.bases import Base, build_from_state, fusion_weights, load_bases, random_target_factory, target_config, target_sizes
from fusionctl.jobs.versions import versions
from fusionctl.models import model_spec
from fusionctl.store import make_checkpoint, save_atomic, write_csv_atomic

log = logging.getLogger(__name__)

@dataclass
class Fused:
    method: str
    result: FusionResult
    model_cfg: ModelConfig
    seconds: float

def prepare(cfg: FuseCommandConfig):
    """Data, base models, spec, lambdas and target sizes: everything a fusion needs."""
    for name in [cfg.solver.name, *cfg.baselines]:
        if name not in METHODS:
            raise FusionctlError(f"unknown solver '{name}'; choose from: {', '.join(METHODS)}")
    splits = load_dataset(cfg.dataset.name, cfg.data_dir, cfg.dataset.val_fraction, cfg.dataset.split_seed, cfg.dataset.download)
    bases = load_bases(cfg, splits)
    spec = model_spec(bases[0].model_cfg)
    lambdas = fusion_weights(cfg.weights, len(bases))
    target = target_config(cfg.target.widths, bases[0])
    return splits, bases, spec, lambdas, target

def run_method(method: str, cfg: FuseCommandConfig, splits: Splits, bases: list[Base], spec, lambdas, target_cfg: ModelConfig) -> Fused:
    sizes = target_sizes(target_cfg)
    solver = replace(cfg.solver, name=method)
    random_target = random_target_factory(target_cfg, splits, cfg.solver.seed)
    start = time.perf_counter()
    result = fuse(method, spec, [b.state for b in bases], lambdas, sizes, solver, random_target)
    seconds = time.perf_counter() - start
    for group, info in result.info.items():
        if not info["converged"] and method == "wb":
            log.warning("%s: group %s did not converge in %d iterations; raise solver.max_iter", method, group, info["iterations"])
    log.info("%s fused %d models in %.2fs %s", method, len(bases), seconds, {g: i["iterations"] for g, i in result.info.items()})
    return Fused(method, result, target_cfg, seconds)

def save_fused(fused: Fused, splits: Splits, bases: list[Base], lambdas, out_dir: Path) -> None:
    ckpt = make_checkpoint(fused.result.state, fused.model_cfg, splits.name, splits.input_shape, splits.num_classes,
                           method=fused.method, bases=[str(b.path) for b in bases], weights=list(lambdas))
    save_atomic(ckpt, out_dir / f"fused_{fused.method}.pt")
    save_atomic(
        {"format": "fusionctl.couplings/1", "method": fused.method, "bases": [str(b.path) for b in bases],
         "couplings": [{g: p.cpu() for g, p in c.items()} for c in fused.result.couplings]},
        out_dir / f"couplings_{fused.method}.pt",
    )

def run_fuse(cfg: FuseCommandConfig, out_dir: Path) -> pd.DataFrame:
    splits, bases, spec, lambdas, target_cfg = prepare(cfg)
    sizes = target_sizes(target_cfg)
    device = resolve_device(cfg.device)
    methods = list(dict.fromkeys([cfg.solver.name, *cfg.baselines]))
    same_widths = all(spec.group_sizes(b.state) == sizes for b in bases)
    if "avg" in methods and not same_widths and cfg.solver.name != "avg":
        log.info("skipping the avg baseline: base and target widths differ")
        methods.remove("avg")
    rows = []
    meta = {"K": len(bases), "ot": cfg.solver.ot, "reg": cfg.solver.reg, "target_widths": str(target_cfg.widths),
            "weights": str([round(w, 4) for w in lambdas]), "dataset": splits.name, "model": bases[0].model_cfg.name}
    probs = {"train": [], "test": []}
    for b in bases:
        model = build_from_state(b.model_cfg, splits, b.state, device)
        for split_name in ("train", "test"):
            split = getattr(splits, split_name)
            loss, acc = evaluate(model, split, device=device)
            rows.append({"role": "base", "method": "base", "seed": b.label, "split": split_name, "accuracy": acc, "loss": loss, "fuse_time_s": 0.0})
            probs[split_name].append(predict_proba(model, split, device=device))
    for split_name in ("train", "test"):
        p = sum(w * q for w, q in zip(lambdas, probs[split_name]))
        y = getattr(splits, split_name).y
        rows.append({"role": "ensemble", "method": "ensemble", "seed": "all", "split": split_name,
                     "accuracy": float((p.argmax(1) == y).float().mean()), "loss": float(F.nll_loss(p.clamp_min(1e-12).log(), y)), "fuse_time_s": 0.0})
    for method in methods:
        fused = run_method(method, cfg, splits, bases, spec, lambdas, target_cfg)
        save_fused(fused, splits, bases, lambdas, out_dir)
        model = build_from_state(fused.model_cfg, splits, fused.result.state, device)
        for split_name in ("train", "test"):
            loss, acc = evaluate(model, getattr(splits, split_name), device=device)
            rows.append({"role": "fused", "method": method, "seed": "+".join(b.label for b in bases), "split": split_name,
                         "accuracy": acc, "loss": loss, "fuse_time_s": fused.seconds})
    table = pd.DataFrame([{**r, **meta, **versions()} for r in rows])
    write_csv_atomic(table, out_dir / "fusion.csv")
    return table

def summary(table: pd.DataFrame) -> str:
    """Accuracy (%) per model on train and test, and fuse time."""
    t = table.assign(model=table["method"].where(table["role"] != "base", "base seed " + table["seed"].astype(str)))
    wide = t.pivot_table(index="model", columns="split", values="accuracy", sort=False) * 100
    wide["fuse_s"] = t.groupby("model", sort=False)["fuse_time_s"].max()
    return wide[["train", "test", "fuse_s"]].round(2).to_string()
