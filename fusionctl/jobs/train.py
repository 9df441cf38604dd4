"""`fusionctl train`: one model per seed into the hashed store."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from fusionctl.config import TrainCommandConfig
from fusionctl.data import client_splits, load_for
from fusionctl.device import resolve_device
from fusionctl.errors import FusionctlError
from fusionctl.jobs.bases import spec_for
from fusionctl.models import TRACED, entry
from fusionctl.store import model_dir, write_csv_atomic
from fusionctl.training import check_optim, train_one
from fusionctl.versions import versions

log = logging.getLogger(__name__)


def run_train(cfg: TrainCommandConfig, out_dir: Path) -> pd.DataFrame:
    entry(cfg.model.name)  # unknown model or optimiser setting: fail before loading data
    check_optim(cfg.optim)
    if not cfg.seeds:
        raise FusionctlError("seeds is empty; give at least one seed, e.g. seeds=[0,1]")
    splits = load_for(cfg)
    if cfg.model.name in TRACED:  # trace before training: a model that cannot be aligned is said now, with its coverage
        spec_for(cfg.model, splits, cfg.spec_check)
    device = resolve_device(cfg.device)
    rows = []
    for client, seed in enumerate(cfg.seeds):
        folder = model_dir(cfg.store_dir, cfg.dataset, cfg.model, cfg.optim, cfg.train, seed, client)
        mine = client_splits(splits, cfg.dataset, client)
        summary = train_one(mine, cfg.model, cfg.optim, cfg.train, seed, folder, device)
        rows.append({"seed": seed, "client": client if cfg.dataset.split != "none" else "", "train_samples": len(mine.train),
                     **summary, "dataset": splits.name, "model": cfg.model.name, **versions()})
    table = pd.DataFrame(rows)
    write_csv_atomic(table, out_dir / "train.csv")
    return table
