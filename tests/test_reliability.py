"""Killed runs resume bit-identically, concurrent runs share one store entry safely, runs are
deterministic, and a sweep survives a failing job (found again by `fusionctl report`)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from fusionctl.commands.report import run_report

pytestmark = pytest.mark.slow
EXE = [sys.executable, "-m", "fusionctl.cli"]
# small batches make an epoch long enough (0.2 to 1 s) to be killed in the middle, and enough of
# them are left after the kill that a fast machine cannot finish first (with 4, one did)
SLOW = ["model.widths=[32,16]", "train.epochs=10", "train.batch_size=8", "seeds=[3]", "threads=1"]


def start(args, cwd):
    return subprocess.Popen([*EXE, *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def weights(store: Path, name: str) -> dict:
    path = next(store.glob(f"mnist_small/mlp-*/seed3/{name}"))
    return torch.load(path, weights_only=True)["state_dict"]


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("ref")
    proc = start(["train", *SLOW, f"store_dir={root}/store", f"hydra.run.dir={root}/run"], root)
    assert proc.wait(timeout=300) == 0, proc.stderr.read()
    return root / "store"


@pytest.mark.parametrize("kill_after_epochs", [1, 2])
def test_sigkill_mid_epoch_then_rerun_gives_identical_weights(tmp_path, reference, kill_after_epochs):
    store = tmp_path / "store"
    proc = start(["train", *SLOW, f"store_dir={store}", f"hydra.run.dir={tmp_path}/run1"], tmp_path)
    deadline = time.time() + 240
    history = None
    while time.time() < deadline:
        found = list(store.glob("mnist_small/mlp-*/seed3/history.csv"))
        if found and len(found[0].read_text().strip().splitlines()) - 1 >= kill_after_epochs:
            history = found[0]
            break
        time.sleep(0.05)
    assert history is not None, "training never wrote its epoch checkpoint"
    time.sleep(0.1)  # now inside the next epoch
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not list(store.glob("mnist_small/mlp-*/seed3/final.pt")), "killed before the end"
    rerun = start(["train", *SLOW, f"store_dir={store}", f"hydra.run.dir={tmp_path}/run2"], tmp_path)
    assert rerun.wait(timeout=300) == 0, rerun.stderr.read()
    assert "resuming after epoch" in (tmp_path / "run2" / "train.log").read_text()
    for name in ("final.pt", "best.pt"):
        assert same(weights(store, name), weights(reference, name)), name


def test_two_processes_training_the_same_model_do_not_collide(tmp_path, reference):
    store = tmp_path / "store"
    a = start(["train", *SLOW, f"store_dir={store}", f"hydra.run.dir={tmp_path}/a"], tmp_path)
    b = start(["train", *SLOW, f"store_dir={store}", f"hydra.run.dir={tmp_path}/b"], tmp_path)
    assert a.wait(timeout=300) == 0 and b.wait(timeout=300) == 0
    logs = (tmp_path / "a" / "train.log").read_text() + (tmp_path / "b" / "train.log").read_text()
    assert "already trained" in logs, "the second process waits for the lock, then finds the model"
    assert same(weights(store, "final.pt"), weights(reference, "final.pt"))


def itself(store: Path) -> str:
    """models=[...] naming seed 3's checkpoint twice: a fusion of one trained model with itself."""
    path = next(store.glob("mnist_small/mlp-*/seed3/best.pt"))
    return f"models=[{path},{path}]"


def test_same_config_and_seed_give_identical_tables(tmp_path, reference):
    tables = []
    for run in ("x", "y"):
        args = ["fuse", *SLOW[:2], "train.batch_size=8", itself(reference), f"hydra.run.dir={tmp_path}/{run}"]
        proc = start(args, tmp_path)
        assert proc.wait(timeout=300) == 0, proc.stderr.read()
        tables.append(pd.read_csv(tmp_path / run / "fusion.csv").drop(columns=["fuse_time_s"]))
    pd.testing.assert_frame_equal(*tables)
    a = torch.load(tmp_path / "x" / "fused_wb.pt", weights_only=True)
    b = torch.load(tmp_path / "y" / "fused_wb.pt", weights_only=True)
    assert same(a["state_dict"], b["state_dict"]) and a["versions"]["git_commit"]


def test_a_failing_job_does_not_stop_the_sweep_and_the_report_lists_it(tmp_path, reference):
    args = ["fuse", "-m", *SLOW[:2], "train.batch_size=8", itself(reference), "baselines=[]",
            "weights=[1,1],[1]", f"hydra.sweep.dir={tmp_path}/sweep"]
    proc = start(args, tmp_path)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1 and "1 job(s) of the sweep failed" in err
    summary, failures = run_report(tmp_path / "sweep")
    assert len(failures) == 1 and "one weight per model" in failures[0][1]
    assert (tmp_path / "sweep" / "0" / "fusion.csv").is_file()
    assert (summary["metric"] == "test accuracy (%)").any() and (tmp_path / "sweep" / "summary.csv").is_file()


def test_report_aggregates_jobs_that_differ_in_seeds(tmp_path):
    for job, (seeds, acc) in enumerate([("seeds=[0,1]", 0.8), ("seeds=[2,3]", 0.9)]):
        folder = tmp_path / str(job)
        (folder / ".hydra").mkdir(parents=True)
        (folder / ".hydra" / "overrides.yaml").write_text(f"- solver=wb\n- {seeds}\n")
        pd.DataFrame([{"role": "fused", "method": "wb", "seed": "x", "split": "test", "accuracy": acc, "loss": 0.1,
                       "post": "none", "stage": "one-shot"}]).to_csv(folder / "fusion.csv", index=False)
    summary, failures = run_report(tmp_path)
    row = summary[(summary.model == "wb") & (summary.metric == "test accuracy (%)")].iloc[0]
    assert row["config"] == "solver=wb" and row["n"] == 2 and not failures
    assert row["mean"] == pytest.approx(85.0) and row["std"] == pytest.approx(7.0710678)
