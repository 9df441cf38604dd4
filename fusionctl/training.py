"""An explicit training loop with resumable, atomic checkpoints in the model store."""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from tqdm import tqdm

from fusionctl.config import ModelConfig, OptimConfig, TrainConfig
from fusionctl.data import Splits, augment_batch
from fusionctl.errors import FusionctlError
from fusionctl.eval.metrics import evaluate, logits_of
from fusionctl.models import build_model
from fusionctl.store import (
    load_checkpoint,
    locked,
    make_checkpoint,
    save_atomic,
    write_csv_atomic,
)

log = logging.getLogger(__name__)


OPTIMIZERS = {  # optim.name -> (parameters, OptimConfig) -> optimiser
    "sgd": lambda params, c: torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay),
    "adam": lambda params, c: torch.optim.Adam(params, lr=c.lr, weight_decay=c.weight_decay),
}
SCHEDULES = {  # optim.schedule -> (epoch after warm-up, epochs after warm-up, OptimConfig) -> learning rate
    "constant": lambda e, span, c: c.lr,
    "cosine": lambda e, span, c: 0.5 * c.lr * (1 + math.cos(math.pi * e / max(span, 1))),
    "step": lambda e, span, c: c.lr * c.gamma ** ((e + c.warmup_epochs) // c.step_size),
}


def check_optim(cfg: OptimConfig, key: str = "optim") -> None:
    """One line for an optimiser setting no run can use, checked before any data is read (`key`:
    where it was given, optim or finetune.optim)."""
    if cfg.name not in OPTIMIZERS:
        raise FusionctlError(f"unknown optimiser '{cfg.name}' ({key}.name); choose from: {', '.join(OPTIMIZERS)}")
    if cfg.schedule not in SCHEDULES:
        raise FusionctlError(f"unknown {key}.schedule '{cfg.schedule}'; choose from: {', '.join(SCHEDULES)}")
    for name, ok, rule in (("lr", cfg.lr > 0, "> 0"), ("momentum", 0 <= cfg.momentum < 1, "in [0, 1)"),
                           ("weight_decay", cfg.weight_decay >= 0, ">= 0"), ("step_size", cfg.step_size >= 1, ">= 1"),
                           ("gamma", cfg.gamma > 0, "> 0"), ("warmup_epochs", cfg.warmup_epochs >= 0, ">= 0"),
                           ("clip_grad", cfg.clip_grad >= 0, ">= 0 (0: off)")):
        if not ok:
            raise FusionctlError(f"{key}.{name} must be {rule}, got {getattr(cfg, name)}")


def make_optimizer(params, cfg: OptimConfig) -> torch.optim.Optimizer:
    check_optim(cfg)
    return OPTIMIZERS[cfg.name](params, cfg)


def lr_at(epoch: int, epochs: int, cfg: OptimConfig) -> float:
    """Learning rate for an epoch: linear warm-up, then the schedule."""
    if epoch < cfg.warmup_epochs:
        return cfg.lr * (epoch + 1) / (cfg.warmup_epochs + 1)
    return SCHEDULES[cfg.schedule](epoch - cfg.warmup_epochs, epochs - cfg.warmup_epochs, cfg)


def train_one(splits: Splits, model_cfg: ModelConfig, optim_cfg: OptimConfig, train_cfg: TrainConfig, seed: int, folder: Path, device: torch.device) -> dict:
    """Train one model into `folder` (best.pt, final.pt, history.csv); resume or skip if work exists."""
    if train_cfg.epochs < 1 or train_cfg.batch_size < 1:
        raise FusionctlError(f"train.epochs and train.batch_size must be >= 1, got {train_cfg.epochs} and {train_cfg.batch_size}")
    with locked(folder):
        if (folder / "final.pt").is_file():
            log.info("seed %d: already trained (%s), nothing to do", seed, folder)
            return _summary(folder)
        torch.manual_seed(seed)
        model = build_model(model_cfg, splits.input_shape, splits.num_classes, splits.vocab).to(device)
        opt = make_optimizer(model.parameters(), optim_cfg)
        gen = torch.Generator().manual_seed(seed)
        history: list[dict] = []
        best: dict | None = None
        start = 0
        resume = folder / "resume.pt"
        if resume.is_file():
            state = torch.load(resume, map_location="cpu", weights_only=True)
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            gen.set_state(state["generator"])
            torch.set_rng_state(state["torch_rng"])
            history, best, start = state["history"], state["best"], state["epoch"]
            log.info("seed %d: resuming after epoch %d", seed, start)

        def checkpoint(state_dict, **meta):
            return make_checkpoint(state_dict, model_cfg, splits.name, splits.input_shape, splits.num_classes, vocab=splits.vocab, seed=seed, **meta)

        bar = tqdm(range(start, train_cfg.epochs), desc=f"train seed {seed}", disable=not sys.stderr.isatty(), leave=False)
        for epoch in bar:
            lr = lr_at(epoch, train_cfg.epochs, optim_cfg)
            for group in opt.param_groups:
                group["lr"] = lr
            tr_loss, tr_acc = _epoch(model, opt, splits, train_cfg.batch_size, gen, device, seed, epoch + 1, optim_cfg.clip_grad, train_cfg.amp)
            val = splits.val if len(splits.val) else splits.train
            val_loss, val_acc = evaluate(model, val, device=device)
            row = {"seed": seed, "epoch": epoch + 1, "lr": lr, "train_loss": tr_loss, "train_acc": tr_acc, "val_loss": val_loss, "val_acc": val_acc}
            history.append(row)
            log.info("seed %d epoch %d/%d: lr %.4g train loss %.4f acc %.4f | val loss %.4f acc %.4f", seed, epoch + 1, train_cfg.epochs, lr, tr_loss, tr_acc, val_loss, val_acc)
            bar.set_postfix(val_acc=f"{val_acc:.4f}")
            if best is None or val_acc > best["val_acc"]:
                best = {"state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}, "epoch": epoch + 1, "val_acc": val_acc}
            save_atomic(
                {"model": model.state_dict(), "optimizer": opt.state_dict(), "generator": gen.get_state(),
                 "torch_rng": torch.get_rng_state(), "history": history, "best": best, "epoch": epoch + 1},
                resume,
            )
            write_csv_atomic(pd.DataFrame(history), folder / "history.csv")
        final_val = history[-1]["val_acc"]
        if final_val <= 1.5 / splits.num_classes:
            log.warning("seed %d ended near chance (val acc %.3f): lower optim.lr, add optim.warmup_epochs or train longer", seed, final_val)
        save_atomic(checkpoint(best["state_dict"], epoch=best["epoch"], val_acc=best["val_acc"]), folder / "best.pt")
        save_atomic(checkpoint(model.state_dict(), epoch=train_cfg.epochs, val_acc=final_val), folder / "final.pt")
        resume.unlink(missing_ok=True)
        return _summary(folder)


def finetune(model: torch.nn.Module, splits: Splits, optim_cfg: OptimConfig, epochs: int, batch_size: int, seed: int, device) -> list[dict]:
    """Continue training a model in place (fused or base) for a fixed budget; returns per-epoch rows."""
    torch.manual_seed(seed)
    opt = make_optimizer(model.parameters(), optim_cfg)
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for epoch in range(epochs):
        for group in opt.param_groups:
            group["lr"] = lr_at(epoch, epochs, optim_cfg)
        loss, acc = _epoch(model, opt, splits, batch_size, gen, device, seed, epoch + 1, optim_cfg.clip_grad)
        rows.append({"epoch": epoch + 1, "train_loss": loss, "train_acc": acc})
    model.eval()
    return rows


def _epoch(model, opt, splits: Splits, batch_size: int, gen: torch.Generator, device, seed: int, epoch: int, clip: float = 0.0,
           amp: bool = False) -> tuple[float, float]:
    model.train()
    n = len(splits.train)
    perm = torch.randperm(n, generator=gen)
    total, correct = 0.0, 0
    for start in range(0, n, batch_size):
        idx = perm[start : start + batch_size]
        x, y = splits.train.x[idx], splits.train.y[idx]
        if splits.augment:
            x = augment_batch(x, gen)
        x, y = x.to(device), y.to(device)
        with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=amp):
            logits = logits_of(model(x))  # an output object or a (logits, aux) tuple: its logits
            loss = F.cross_entropy(logits.float(), y)
        if not torch.isfinite(loss):
            raise FusionctlError(f"training seed {seed} diverged in epoch {epoch} (loss {float(loss.detach())}); lower optim.lr or add optim.warmup_epochs")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        total += float(loss.detach()) * len(idx)
        correct += int((logits.argmax(1) == y).sum())
    return total / n, correct / n


def _summary(folder: Path) -> dict:
    best = load_checkpoint(folder / "best.pt")
    return {"folder": str(folder), "best_epoch": best["epoch"], "best_val_acc": best["val_acc"]}
