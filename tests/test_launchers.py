"""Sweeps through Hydra's launchers give the same results as the basic launcher."""

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from fusionctl.commands.report import run_report

pytestmark = pytest.mark.slow
EXE = [sys.executable, "-m", "fusionctl.cli"]
TINY = ["model.widths=[24,12]", "train.epochs=1", "threads=1"]


def run(args, cwd):
    proc = subprocess.run([*EXE, *args], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def tables(sweep: Path) -> list[pd.DataFrame]:
    return [pd.read_csv(p).drop(columns=["fuse_time_s"]) for p in sorted(sweep.glob("*/fusion.csv"))]


def test_joblib_and_submitit_sweeps_match_the_basic_launcher(tmp_path):
    store = f"store_dir={tmp_path}/store"
    run(["train", *TINY, "seeds=[0,1,2]", store, f"hydra.run.dir={tmp_path}/train"], tmp_path)
    sweep = ["fuse", "-m", *TINY, store, "baselines=[]", "seeds=[0,1],[1,2]", "solver=wb,ot"]
    run([*sweep, f"hydra.sweep.dir={tmp_path}/basic"], tmp_path)
    run([*sweep, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={tmp_path}/joblib"], tmp_path)
    run([*sweep, "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", f"hydra.sweep.dir={tmp_path}/submitit"], tmp_path)
    basic = tables(tmp_path / "basic")
    assert len(basic) == 4
    for other in ("joblib", "submitit"):
        got = tables(tmp_path / other)
        assert len(got) == 4, other
        for a, b in zip(basic, got):
            pd.testing.assert_frame_equal(a, b)
    summary, failures = run_report(tmp_path / "submitit")
    assert not failures and (summary["n"] == 2).any()  # two seed pairs per solver aggregated
    log = next((tmp_path / "joblib").glob("0/fuse.log")).read_text()
    assert "fused" in log


def test_slurm_preset_composes(tmp_path):
    out = run(["fuse", "hydra/launcher=slurm_gpu", "--cfg", "hydra", "-p", "hydra.launcher"], tmp_path).stdout
    assert "partition: gpu" in out and "gpus_per_node: 1" in out
