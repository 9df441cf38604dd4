"""End-to-end through the real console script, in subprocesses, on tiny widths."""

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

pytestmark = pytest.mark.slow

EXE = [shutil.which("fusionctl")] if shutil.which("fusionctl") else [sys.executable, "-m", "fusionctl.cli"]
TINY = ["model.widths=[24,12]", "train.epochs=2", "seeds=[0,1]", "threads=1"]


def run(args, cwd, ok=True):
    proc = subprocess.run([*EXE, *args], cwd=cwd, capture_output=True, text=True, timeout=300)
    if ok and proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    proc = run(["train", *TINY, "hydra.run.dir=runs/train"], root)
    assert "seed" in proc.stdout
    return root


def one_line_error(proc, *needles):
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("fusionctl: error:")
    for n in needles:
        assert n in lines[0], lines[0]
    assert "Traceback" not in proc.stdout + proc.stderr


def test_help_lists_the_subcommands(tmp_path):
    out = run(["--help"], tmp_path).stdout
    for cmd in ("train", "fuse", "landscape"):
        assert f"  {cmd}" in out


def test_unknown_subcommand_is_one_line_exit_2(tmp_path):
    proc = run(["frobnicate"], tmp_path, ok=False)
    assert proc.returncode == 2
    one_line_error(proc, "frobnicate", "train")


def test_unknown_dataset_and_model_are_one_line(tmp_path):
    for arg, needle in (("dataset=imagenet", "mnist_small"), ("model=transformer", "mlp"), ("solver=magic", "wb")):
        proc = run(["fuse", arg], tmp_path, ok=False)
        assert proc.returncode == 2
        one_line_error(proc, arg.split("=")[1], needle)


def test_hydra_app_features(tmp_path):
    assert "solver:" in run(["fuse", "--cfg", "job"], tmp_path).stdout
    assert "Powered by Hydra" in run(["train", "--help"], tmp_path).stdout


def test_train_then_fuse_end_to_end(work):
    again = run(["train", *TINY, "hydra.run.dir=runs/train2"], work)
    assert "already trained" in (work / "runs/train2/train.log").read_text()
    run(["fuse", *TINY, "hydra.run.dir=runs/fuse"], work)
    out = work / "runs/fuse"
    table = pd.read_csv(out / "fusion.csv")
    for col in ("role", "method", "seed", "split", "accuracy", "loss", "fuse_time_s", "torch_version", "pot_version"):
        assert col in table.columns
    assert set(table["method"]) == {"base", "ensemble", "wb", "avg", "ot"}
    assert set(table["split"]) == {"train", "test"}
    assert table["accuracy"].between(0, 1).all()
    assert (out / "fusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (out / "fusion.pdf").exists()
    base = table[(table.role == "base") & (table.split == "test")]["accuracy"]
    assert base.min() > 0.5, "two epochs on mnist_small should beat chance by far"
    couplings = torch.load(out / "couplings_wb.pt", weights_only=True)
    assert couplings["format"] == "fusionctl.couplings/2" and len(couplings["couplings"]) == 2
    assert torch.equal(couplings["couplings"][1]["h1"].sort().values, torch.arange(24))  # a permutation, as its index
    assert torch.load(out / "fused_wb.pt", weights_only=True)["format"] == "fusionctl.model/1"
    report = (out / "alignment.md").read_text()  # the hand-written MLP spec: its two hidden layers
    assert "# Alignment: 2 groups, 36 hidden units" in report and "| `h1` | 24 | any permutation | `layers.0` |" in report
    assert "wb" in again.stdout or again.returncode == 0


def test_fuse_k4_and_other_target_widths(work):
    run(["train", "model.widths=[24,12]", "train.epochs=2", "seeds=[2,3]", "threads=1", "hydra.run.dir=runs/train3"], work)
    run(["fuse", *TINY, "seeds=[0,1,2,3]", "target.widths=[30,10]", "solver.ot=sinkhorn", "solver.reg=0.01",
         "hydra.run.dir=runs/fuse4"], work)
    table = pd.read_csv(work / "runs/fuse4/fusion.csv")
    assert set(table["method"]) == {"base", "ensemble", "wb", "ot"}  # avg skipped: widths differ
    assert (table["K"] == 4).all() and table["target_widths"].iloc[0] == "[30, 10]"


def test_multirun_sweep_over_two_solvers(work):
    run(["fuse", "-m", *TINY, "solver=wb,avg", "baselines=[]", "hydra.sweep.dir=runs/sweep"], work)
    tables = sorted(Path(work / "runs/sweep").glob("*/fusion.csv"))
    assert len(tables) == 2
    methods = {m for t in tables for m in pd.read_csv(t)["method"]}
    assert {"wb", "avg"} <= methods


@pytest.mark.parametrize("args, needles", [
    (["weights=[1]"], ["weights", "one weight per model"]),
    (["weights=[-1,2]"], ["non-negative"]),
    (["target.widths=[5]"], ["target.widths has 1 entries", "mlp has 2"]),
    (["solver.ot=sinkhorn", "solver.reg=0"], ["solver.reg"]),
    (["seeds=[0,9]"], ["seed 9", "fusionctl train"]),
    (["models=[nowhere.pt,nowhere2.pt]"], ["nowhere.pt", "does not exist"]),
])
def test_bad_fuse_input_is_one_line_exit_1(work, args, needles):
    proc = run(["fuse", *TINY, *args, "hydra.run.dir=runs/bad"], work, ok=False)
    assert proc.returncode == 1
    one_line_error(proc, *needles)


def test_models_of_different_depth_or_corrupt_are_rejected(work):
    run(["train", "model.widths=[24]", "train.epochs=1", "seeds=[0]", "threads=1", "hydra.run.dir=runs/train_shallow"], work)
    deep = next(work.glob("outputs/store/mnist_small/mlp-*/seed0/best.pt"))
    shallow = [p for p in work.glob("outputs/store/mnist_small/mlp-*/seed0/best.pt") if p != deep]
    paths = sorted([deep, *shallow])
    proc = run(["fuse", f"models=[{paths[0]},{paths[1]}]", "hydra.run.dir=runs/bad2"], work, ok=False)
    assert proc.returncode == 1
    one_line_error(proc, "hidden layers", "equal depth")
    corrupt = work / "corrupt.pt"
    corrupt.write_bytes(deep.read_bytes()[:200])
    before = deep.read_bytes()
    proc = run(["fuse", f"models=[{deep},{corrupt}]", "hydra.run.dir=runs/bad3"], work, ok=False)
    assert proc.returncode == 1
    one_line_error(proc, "corrupt.pt", "cannot be loaded safely")
    assert deep.read_bytes() == before, "a failed run must not touch existing checkpoints"


def test_state_dicts_saved_elsewhere_fuse_as_their_checkpoints(work):
    """models=[...] also takes what a training script saves (the weights alone, or under a key with
    DataParallel's prefix): the same bases give the same fusions, the widths read from the weights."""
    ckpts = sorted(p for p in work.glob("outputs/store/mnist_small/mlp-*/seed[01]/best.pt")
                   if torch.load(p, weights_only=True)["model"]["widths"] == [24, 12])
    assert len(ckpts) == 2
    states = [torch.load(p, weights_only=True)["state_dict"] for p in ckpts]
    torch.save({"epoch": 2, "model_state_dict": {f"module.{k}": v for k, v in states[0].items()}}, work / "elsewhere0.pt")
    torch.save(states[1], work / "elsewhere1.pt")
    tables = []
    for name, models, widths in (("ckpt", ckpts, "[24,12]"), ("plain", [work / "elsewhere0.pt", work / "elsewhere1.pt"], "[7,7]")):
        out = run(["fuse", f"models=[{models[0]},{models[1]}]", f"model.widths={widths}", "baselines=[wm]", "threads=1",
                   f"hydra.run.dir=runs/fuse_{name}"], work).stdout
        assert name == "plain" or ("base seed0/best " in out and "base seed1/best " in out), out
        t = pd.read_csv(work / f"runs/fuse_{name}/fusion.csv")
        tables.append(t.sort_values(["role", "method", "post", "split", "seed"], na_position="first")[["role", "method", "split", "accuracy", "loss"]])
    assert set(tables[1]["method"]) == {"base", "ensemble", "wb", "wm"}
    seeds = pd.read_csv(work / "runs/fuse_ckpt/fusion.csv", dtype={"seed": str}).groupby("role")["seed"].unique()
    assert sorted(seeds["base"]) == ["seed0/best", "seed1/best"], "two files named best.pt are two rows of the table"
    assert list(seeds["fused"]) == ["seed0/best+seed1/best"]
    pd.testing.assert_frame_equal(tables[0].reset_index(drop=True), tables[1].reset_index(drop=True))
    fused = torch.load(work / "runs/fuse_plain/fused_wb.pt", weights_only=True)
    assert fused["model"]["widths"] == [24, 12]


def test_a_fused_checkpoint_fuses_again_as_a_base(work):
    """Re-merging (ZipIt #11 fails on the state-dict keys): fused_wb.pt is a base like any checkpoint;
    fused with itself it keeps its function, and with a third model it takes weights as any base does."""
    run(["fuse", *TINY, "baselines=[]", "hydra.run.dir=runs/first"], work)
    first = work / "runs/first/fused_wb.pt"
    run(["fuse", *TINY, f"models=[{first},{first}]", "baselines=[]", "hydra.run.dir=runs/again_self"], work)
    table = pd.read_csv(work / "runs/again_self/fusion.csv")
    test = table[table.split == "test"].set_index("role")["accuracy"]
    assert abs(test["fused"] - test["base"].iloc[0]) < 2e-3, test
    before = pd.read_csv(work / "runs/first/fusion.csv")
    assert before[(before.split == "test") & (before.role == "fused") & (before.post == "none")]["accuracy"].item() == test["base"].iloc[0]
    seed1 = next(p for p in work.glob("outputs/store/mnist_small/mlp-*/seed1/best.pt") if torch.load(p, weights_only=True)["model"]["widths"] == [24, 12])
    run(["fuse", *TINY, f"models=[{first},{seed1}]", "weights=[2,1]", "baselines=[wm]", "hydra.run.dir=runs/again"], work)
    table = pd.read_csv(work / "runs/again/fusion.csv", dtype={"seed": str})
    assert set(table[table.role == "base"]["seed"]) == {"fused_wb", "best"} and {"wb", "wm"} <= set(table["method"])  # file names tell them apart
    assert set(table[table.role == "fused"]["weights"]) == {"[0.6667, 0.3333]"}


def test_landscape_writes_documented_files(work):
    run(["landscape", *TINY, "landscape=fast", "landscape.grid=5", "post=[repair]", "hydra.run.dir=runs/land"], work)
    out = work / "runs/land"
    curves = pd.read_csv(out / "barrier.csv")
    assert list(curves.columns) == ["line", "post", "t", "split", "metric", "value"]
    assert set(zip(curves["line"], curves["post"])) == {(line, post) for line in ("naive 1-2", "aligned 1-2") for post in ("none", "repair")}
    assert set(curves["metric"]) == {"loss", "accuracy", "error"}
    table = pd.read_csv(out / "barriers.csv")
    for col in ("line", "post", "split", "loss_barrier", "error_barrier", "midpoint_accuracy", "max_output_diff"):
        assert col in table.columns
    assert len(table) == 8 and (table["loss_barrier"] >= 0).all()
    aligned = table[table.line == "aligned 1-2"]["max_output_diff"]
    assert (aligned < 1e-3).all(), "exact couplings: permuted model 2 computes model 2's function"
    for name in ("barrier", "plane_train_loss", "plane_test_error"):
        assert (out / f"{name}.png").stat().st_size > 1000 and (out / f"{name}.pdf").is_file()
    npz = np.load(out / "plane.npz")
    assert npz["train_loss"].shape == (5, 5) and npz["test_accuracy"].shape == (5, 5)
    assert "permuted model 2" in list(npz["marker_names"])


def test_landscape_sweep_over_solvers_and_bad_points(work):
    run(["landscape", "-m", *TINY, "landscape=fast", "landscape.plane=false", "solver=wb,ot,avg", "hydra.sweep.dir=runs/lsweep"], work)
    assert len(list((work / "runs/lsweep").glob("*/barriers.csv"))) == 3
    proc = run(["landscape", *TINY, "landscape.points=1", "hydra.run.dir=runs/lbad"], work, ok=False)
    assert proc.returncode == 1
    one_line_error(proc, "landscape.points")


def test_text_dataset_end_to_end_through_train_and_fuse(tmp_path):
    from test_text import write_ag_news

    write_ag_news(tmp_path / "data" / "ag_news", per_class=10)
    common = ["dataset=ag_news", "data_dir=data", "dataset.max_len=16", "model=lstm", "model.embed=6", "model.widths=[8]",
              "optim=adam", "train.epochs=1", "seeds=[0,1]", "threads=1"]
    run(["train", *common, "hydra.run.dir=runs/train"], tmp_path)
    run(["fuse", *common, "solver=gwb", "baselines=[wb,avg,wm]", "hydra.run.dir=runs/fuse"], tmp_path)
    table = pd.read_csv(tmp_path / "runs" / "fuse" / "fusion.csv")
    assert {"gwb", "wb", "avg", "wm"} <= set(table.method)
    fused = torch.load(tmp_path / "runs" / "fuse" / "fused_gwb.pt", weights_only=True)
    assert fused["vocab"] > 2 and fused["model"]["embed"] == 6 and fused["state_dict"]["embed.weight"].shape[0] == 6


def test_own_network_train_fuse_landscape(tmp_path):
    """model=custom through all three commands: traced, fused, and permuted model 2 keeps its function."""
    import os

    root = Path(__file__).resolve().parent.parent
    own = ["model=custom", "model.target=tests.custom_nets.SmallNet", "model.kwargs={width:4}", "train.epochs=1", "seeds=[0,1]", "threads=1"]
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}

    def go(*args):
        proc = subprocess.run([*EXE, *args], cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
        assert proc.returncode == 0, proc.stderr
        return proc

    go("train", *own, "hydra.run.dir=runs/train")
    assert "permutable hidden units: 40 of 40" in (tmp_path / "runs/train/train.log").read_text()
    go("fuse", *own, "post=[bn_reset]", "baselines=[wm]", "hydra.run.dir=runs/fuse")
    table = pd.read_csv(tmp_path / "runs/fuse/fusion.csv")
    assert {"wb", "wm"} <= set(table["method"])
    assert set(table["target_widths"]) == {"[4, 4, 32]"}  # its own group sizes, not model.widths
    go("fuse", *own, "target.kwargs={width:8}", "baselines=[wm,ot]", "hydra.run.dir=runs/wider")  # into other widths
    table = pd.read_csv(tmp_path / "runs/wider/fusion.csv")
    assert set(table["method"]) == {"base", "ensemble", "wb", "ot"} and set(table["target_widths"]) == {"[8, 8, 32]"}
    assert "skipping the wm baseline" in (tmp_path / "runs/wider/fuse.log").read_text()
    fused = torch.load(tmp_path / "runs/wider/fused_wb.pt", weights_only=True)
    assert fused["model"]["kwargs"] == {"width": 8} and fused["state_dict"]["stem.0.weight"].shape[0] == 8
    wide = [*own[:2], "model.kwargs={width:6}", "train.epochs=1", "seeds=[2]", "threads=1"]  # a base of other widths
    go("train", *wide, "hydra.run.dir=runs/train6")
    paths = [next(tmp_path.glob(f"outputs/store/mnist_small/custom-*/seed{s}/best.pt")) for s in (0, 2)]
    go("fuse", *own[:2], f"models=[{paths[0]},{paths[1]}]", "post=[repair]", "baselines=[ot,wm]", "threads=1", "hydra.run.dir=runs/mixed")
    table = pd.read_csv(tmp_path / "runs/mixed/fusion.csv")
    assert set(table["method"]) == {"base", "ensemble", "wb", "ot"} and set(table["target_widths"]) == {"[4, 4, 32]"}
    assert set(table[table.method == "wb"]["post"]) == {"none", "repair"}
    go("landscape", *own, "landscape=fast", "landscape.plane=false", "hydra.run.dir=runs/land")
    bars = pd.read_csv(tmp_path / "runs/land/barriers.csv")
    assert bars[bars.line == "aligned 1-2"]["max_output_diff"].max() < 1e-4


def test_a_network_returning_an_output_object_trains_fuses_and_draws_its_line(tmp_path):
    """model=custom whose forward returns its logits in an object (.logits), as Hugging Face models do:
    training, evaluation, cost=auto's held-out choice and the landscape read the logits from it. Its head
    has no bias (head_bias=false): post=[repair] corrects the other layers and names it."""
    import os

    root = Path(__file__).resolve().parent.parent
    own = ["model=custom", "model.target=tests.custom_nets.OutputObjectNet", "model.kwargs={width:4,head_bias:false}", "train.epochs=1",
           "seeds=[0,1]", "threads=1"]
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    for command in (["train"], ["fuse", "baselines=[wm]", "post=[repair]"], ["landscape", "landscape=fast", "landscape.plane=false"]):
        proc = subprocess.run([*EXE, *command, *own, f"hydra.run.dir=runs/{command[0]}"], cwd=tmp_path, capture_output=True, text=True,
                              timeout=300, env=env)
        assert proc.returncode == 0, proc.stderr[-2000:]
    table = pd.read_csv(tmp_path / "runs/fuse/fusion.csv")
    assert {"wb", "wm"} <= set(table["method"]) and table[table.role == "base"]["accuracy"].min() > 0.3
    assert set(table[table.method == "wm"]["post"]) == {"none", "repair"}  # REPAIR where a layer has a bias or norm: not head.0
    assert "corrects 3 of 4 layers; head.0 has no bias and no norm after it" in (tmp_path / "runs/fuse/fuse.log").read_text()
    assert ("REPAIR (post=[repair]) corrects 3 of 4 layers; these have no bias and no norm after them and keep the fused "
            "statistics: `head.0`") in (tmp_path / "runs/fuse/alignment.md").read_text()
    bars = pd.read_csv(tmp_path / "runs/landscape/barriers.csv")
    assert bars[bars.line == "aligned 1-2"]["max_output_diff"].max() < 1e-4


def test_the_experts_of_a_mixture_move_from_the_command_line_where_the_self_check_confirms_it(tmp_path):
    """model=custom with stacked experts: fuse moves them as a group (alignment.md says so), also into
    a target of other widths (whose experts are confirmed too); spec_check=false leaves them in place."""
    import os

    root = Path(__file__).resolve().parent.parent
    own = ["model=custom", "model.target=tests.custom_nets.StackedExpertsNet", "model.kwargs={dim:8,hidden:8,experts:3,patch:7}",
           "train.epochs=1", "seeds=[0,1]", "threads=1"]
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    runs = {"train": ["train"], "moved": ["fuse", "baselines=[wm]", "target.kwargs={dim:12}"],
            "unchecked": ["fuse", "baselines=[]", "spec_check=false"]}
    for name, args in runs.items():
        proc = subprocess.run([*EXE, *args, *own, f"hydra.run.dir=runs/{name}"], cwd=tmp_path, capture_output=True, text=True,
                              timeout=300, env=env)
        assert proc.returncode == 0, proc.stderr[-2000:]
    moved = (tmp_path / "runs/moved/alignment.md").read_text()
    assert "the experts of 1 mixture moved as a group each" in moved
    assert "| `experts` | 3 | any permutation | `router` | `gate_up_proj`[0], `down_proj`[0], `router.weight`[0] |" in moved
    widths = set(pd.read_csv(tmp_path / "runs/moved/fusion.csv")["target_widths"])
    assert widths == {"[3, 8, 12]"}  # the experts, their hidden units, the stream (dim 12)
    unchecked = (tmp_path / "runs/unchecked/alignment.md").read_text()
    assert "| `experts` |" not in unchecked and "router (indices of a max or min)" in unchecked


def test_a_network_fx_cannot_trace_runs_from_the_command_line_with_a_spec_written_by_hand(tmp_path):
    """model.spec: the user's function gives the spec; the transport it drives keeps model 2's function."""
    import os

    root = Path(__file__).resolve().parent.parent
    own = ["model=custom", "model.target=tests.custom_nets.BranchyMLP", "model.kwargs={in_features:784}", "train.epochs=1",
           "seeds=[0,1]", "threads=1"]
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}

    def go(*args):
        proc = subprocess.run([*EXE, *args], cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
        return proc

    refused = go("train", *own, "hydra.run.dir=runs/untraced")
    assert refused.returncode == 1 and "model.spec=mypkg.nets.my_spec" in refused.stderr
    own.append("model.spec=tests.custom_nets.branchy_spec")
    assert go("train", *own, "hydra.run.dir=runs/train").returncode == 0
    assert "spec from tests.custom_nets.branchy_spec, 2 groups, 14 hidden units" in (tmp_path / "runs/train/train.log").read_text()
    fuse = go("fuse", *own, "baselines=[am]", "post=[repair]", "hydra.run.dir=runs/fuse")
    assert fuse.returncode == 0, fuse.stderr
    table = pd.read_csv(tmp_path / "runs/fuse/fusion.csv")
    assert {"wb", "am"} <= set(table["method"]) and set(table["target_widths"]) == {"[8, 6]"}
    land = go("landscape", *own, "landscape=fast", "landscape.plane=false", "hydra.run.dir=runs/land")
    assert land.returncode == 0, land.stderr
    bars = pd.read_csv(tmp_path / "runs/land/barriers.csv")
    assert bars[bars.line == "aligned 1-2"]["max_output_diff"].max() < 1e-4


def test_barriers_from_python_match_the_landscape_command(work):
    """fusionctl.barriers on the test split gives the barriers `fusionctl landscape` writes for the same
    two checkpoints (data-free alignment, so both align the same way)."""
    import fusionctl
    from fusionctl.config import ModelConfig
    from fusionctl.data import load_dataset
    from fusionctl.models import build_from_state

    run(["landscape", *TINY, "landscape=fast", "landscape.plane=false", "solver.cost=weight", "hydra.run.dir=runs/land_weight"], work)
    table = pd.read_csv(work / "runs/land_weight/barriers.csv")
    table = table[(table.split == "test") & (table.post == "none")].set_index("line")
    ckpts = [torch.load(p, weights_only=True) for p in sorted(work.glob("outputs/store/mnist_small/mlp-*/seed[01]/best.pt"))]
    ckpts = [c for c in ckpts if c["model"]["widths"] == [24, 12]]
    splits = load_dataset("mnist_small", work / "data")
    models = [build_from_state(ModelConfig(**c["model"]), splits, c["state_dict"]) for c in ckpts]
    test = splits.test
    summary, curves = fusionctl.barriers(models, [(test.x[i:i + 300], test.y[i:i + 300]) for i in range(0, len(test), 300)],
                                         points=11, cost="weight")
    summary = summary.set_index("line")
    assert list(summary.index) == ["naive 1-2", "aligned 1-2"] and len(curves) == 22
    for line in summary.index:
        for col in ("loss_barrier", "error_barrier", "midpoint_accuracy"):
            assert abs(summary.loc[line, col] - table.loc[line, col]) < 1e-4, (line, col)
    assert summary.loc["aligned 1-2", "loss_barrier"] < summary.loc["naive 1-2", "loss_barrier"]
