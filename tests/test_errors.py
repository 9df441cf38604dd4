"""Every bad input in docs/errors.md, run through the real command line in-process: one line on
stderr, the documented exit code, no traceback, nothing already written damaged.

    .venv/bin/python tests/test_errors.py   # regenerates docs/errors.md from the observed messages
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from fusionctl import cli

ROOT = Path(__file__).resolve().parent.parent
TINY = ["model.widths=[24,12]", "train.epochs=1", "seeds=[0,1]", "threads=1"]

# (command and overrides, exit code, text the one-line message must contain)
CASES = [
    (["frobnicate"], 2, "unknown command 'frobnicate'"),
    (["fuse", "dataset=imagenet"], 2, "unknown dataset 'imagenet'"),
    (["fuse", "model=transformer"], 2, "unknown model 'transformer'"),
    (["fuse", "solver=magic"], 2, "unknown solver 'magic'"),
    (["train", "dataset=mnist", "data_dir={tmp}/empty", "dataset.download=false"], 1, "could not be downloaded"),
    (["train", "dataset.split=banana"], 1, "unknown dataset.split"),
    (["train", "dataset.split=hetero", "seeds=[0,1,2]"], 1, "hetero has 2 clients"),
    (["train", "dataset.split=hetero", "dataset.hetero_share=2"], 1, "dataset.hetero_share must be in [0, 1]"),
    (["train", "dataset.split=dirichlet", "dataset.clients=50", "dataset.dirichlet_alpha=0.001"], 1,
     "client 0 of dataset.split=dirichlet has no training samples; raise dataset.dirichlet_alpha or lower dataset.clients"),
    (["fuse", "seeds=[1,0,1]"], 1, "seeds=[1, 0, 1] names seed 1 more than once; give distinct seeds"),
    (["fuse", "train.checkpoint=last"], 1, "train.checkpoint must be best (highest validation accuracy) or final, got 'last'"),
    (["train", "dataset.val_fraction=1.5"], 1, "dataset.val_fraction must be in [0, 1)"),
    (["train", "train.epochs=many"], 1, "bad config value for train.epochs"),
    (["train", "train.epochs=0"], 1, "train.epochs and train.batch_size must be >= 1"),
    (["train", "model.widths=[]"], 1, "model.widths must be a non-empty list"),
    (["train", "model=vgg11", "dataset=seq_mnist_small"], 1, "needs images"),
    (["train", "model=vgg11", "model.widths=[8,8]"], 1, "does not fit vgg11"),
    (["train", "dataset=ag_news", "data_dir={tmp}/empty", "dataset.download=false"], 1, "ag_news/train.csv"),
    (["train", "model=lstm", "model.embed=16"], 1, "set model.embed=0 or use a text dataset"),
    (["train", "optim.name=rmsprop"], 1, "unknown optimiser 'rmsprop'"),
    (["train", "optim.schedule=weird"], 1, "unknown optim.schedule"),
    (["train", "optim.lr=-1"], 1, "optim.lr must be > 0, got -1.0"),
    (["train", "optim.momentum=1"], 1, "optim.momentum must be in [0, 1)"),
    (["train", "seedz=[0,1]"], 2, "no setting 'seedz'; the settings are: dataset, model, optim, train, seeds"),
    (["fuse", "optim.lrr=0.1"], 2, "no setting 'optim.lrr'; optim has: name, lr, momentum"),
    (["fuse", "finetune.epochs=1", "finetune.batch_size=0"], 1, "finetune.batch_size must be >= 1"),
    (["fuse", "finetune.epochs=1", "finetune.optim.name=rmsprop"], 1, "unknown optimiser 'rmsprop' (finetune.optim.name)"),
    (["train", "optim.lr=1e30", "seeds=[5]"], 1, "diverged in epoch 1"),
    (["train", "device=cuda"], 1, "no CUDA device"),
    (["train", "store_dir=/proc/fusionctl-store"], 1, "cannot write"),
    (["fuse", "hydra.run.dir=/proc/fusionctl/run"], 1, "cannot create the output folder"),
    (["fuse", "seeds=[0,9]"], 1, "no trained model for seed 9"),
    (["fuse", "models=[{tmp}/missing.pt,{tmp}/missing2.pt]"], 1, "does not exist"),
    (["fuse", "models=[{seed0},{tmp}/corrupt.pt]"], 1, "cannot be loaded safely"),
    (["fuse", "models=[{seed0},{tmp}/foreign.pt]"], 1, "is not a fusionctl checkpoint (expected format fusionctl.model/1) nor a state dict"),
    (["fuse", "models=[{tmp}/plain0.pt,{tmp}/plain1.pt]", "model.bias=true"], 1, "is a state dict, but not of mlp: it lacks layers.0.bias"),
    (["fuse", "models=[{seed0},{tmp}/classes.pt]"], 1, "layers.2.weight has shape (5, 12), but mlp on mnist_small"),
    (["fuse", "models=[{seed0},{shallow}]"], 1, "needs equal depth"),
    (["fuse", "dataset=seq_mnist_small", "models=[{seed0},{seed1}]"], 1, "was trained on 'mnist_small'"),
    (["fuse", "weights=[1]"], 1, "one weight per model"),
    (["fuse", "weights=[-1,2]"], 1, "must be non-negative"),
    (["fuse", "weights=[0,0]"], 1, "positive sum"),
    (["fuse", "target.widths=[5]"], 1, "target.widths has 1 entries"),
    (["fuse", "target.widths=[0,4]"], 1, "target.widths must be positive"),
    (["fuse", "solver.ot=sinkhorn", "solver.reg=0"], 1, "solver.reg must be > 0"),
    (["fuse", "solver.ot=simplex"], 1, "unknown solver.ot"),
    (["fuse", "solver.init=zero"], 1, "unknown solver.init"),
    (["fuse", "solver.cost=activations"], 1, "unknown solver.cost"),
    (["fuse", "solver=gwb", "solver.alpha=-1"], 1, "solver.alpha must be >= 0"),
    (["fuse", "solver.max_iter=0"], 1, "solver.max_iter must be >= 1"),
    (["fuse", "solver.sweeps=-1"], 1, "solver.sweeps must be >= 0"),
    (["fuse", "solver.cost_mix=2"], 1, "solver.cost_mix must be in [0, 1]"),
    (["fuse", "solver.norm_stats=reset"], 1, "unknown solver.norm_stats 'reset'"),
    (["fuse", "solver=wm", "solver.reg=0.1"], 2, "solver=wm has no setting 'reg'"),
    (["fuse", "solver=zipit", "solver.alpha=0"], 1, "solver.alpha must be in (0, 1]"),
    (["fuse", "solver=zipit", "target.widths=[49,12]", "baselines=[]"], 1, "group h1 can have at most the 48 units its models have together"),
    (["fuse", "seeds=[0]"], 1, "needs at least two base models"),
    (["train", "threads=-3"], 1, "threads must be >= 0"),
    (["train", "solver.sweeps=0"], 2, "`fusionctl train` does not read solver; pass it to fuse or landscape"),
    (["fuse", "solver=wm", "target.widths=[30,10]", "baselines=[]"], 1, "needs every base model and the target to have the same widths"),
    (["fuse", "target.kwargs={{width:8}}"], 1, "target.kwargs sets a traced model's constructor arguments; mlp takes target.widths"),
    (["fuse", "baselines=[magic]"], 1, "unknown solver 'magic'"),
    (["fuse", "post=[magic]"], 1, "unknown post-step 'magic'"),
    (["fuse", "model=lstm", "post=[repair]"], 1, "not recurrent models"),
    (["fuse", "finetune.epochs=-1"], 1, "finetune.epochs must be >= 0"),
    (["landscape", "landscape.points=1"], 1, "landscape.points must be >= 2"),
    (["landscape", "landscape.grid=1"], 1, "landscape.grid must be >= 2"),
    (["landscape", "seeds=[0]"], 1, "at least two base models"),
    (["landscape", "solver=zipit"], 1, "solver=zipit merges units (several of one model into one) and aligns no model to another"),
    (["fuse", "model=custom", "model.target=tests.custom_nets.SmallNet", "model.kwargs={{width:4}}", "train.epochs=1", "models=[{custom0},{custom0}]",
      "target.widths=[8,8]"], 1, "tests.custom_nets.SmallNet takes its widths from its constructor: set target.kwargs"),
    (["fuse", "model=custom", "model.target=tests.custom_nets.SmallNet", "model.kwargs={{width:4}}", "train.epochs=1", "models=[{custom0},{custom0}]",
      "target.kwargs={{num_classes:5}}"], 1, "does not build tests.custom_nets.SmallNet at other widths: its head.2.weight has shape (5, 32)"),
    (["fuse", "model=custom", "model.target=tests.custom_nets.BareMLP", "model.kwargs={{side:28}}", "train.epochs=1", "models=[{bare0},{bare0}]",
      "post=[repair]"], 1, "corrects a layer's statistics in its bias or in the norm after it; no layer of this model has either"),
    (["train", "model=custom", "model.target=tests.custom_nets.Untraceable"], 1, "cannot be traced by torch.fx"),
    (["train", "model=custom", "model.target=tests.custom_nets.SmallNet", "model.kwargs={{in_channels:3}}"], 1,
     "give example inputs of the shape the model expects"),
    (["train", "model=custom", "model.target=tests.custom_nets.Nope"], 1, "cannot import model.target=tests.custom_nets.Nope"),
    (["train", "model=torchvision", "model.arch=resnet9000"], 1, "torchvision has no classification model 'resnet9000'"),
    (["train", "model=timm", "model.arch=resnet9000"], 1, "timm has no model 'resnet9000'"),
    (["fuse", "models=[{seed0},{custom0}]"], 1, "fuse models of one architecture"),
    (["train", "model=custom", "model.target=tests.custom_nets.SmallNet", "model.width=4"], 2,
     "model=custom has no setting 'width'; its settings are: target, kwargs, spec"),
    (["train", "model=custom", "model.target=tests.custom_nets.BranchyMLP", "model.spec=tests.custom_nets.nope"], 1,
     "cannot import model.spec=tests.custom_nets.nope"),
    (["train", "model=custom", "model.target=tests.custom_nets.BranchyMLP", "model.spec=torch.nn.Identity"], 1,
     "torch.nn.Identity(...) returned a value of type Identity, not a fusionctl.AlignmentSpec"),
    (["train", "model=custom", "model.target=tests.custom_nets.SmallNet", "model.spec=tests.custom_nets.branchy_spec"], 1,
     "model.spec=tests.custom_nets.branchy_spec does not fit tests.custom_nets.SmallNet: alignment spec does not match the state dict"),
    (["train", "model=custom", "model.target=tests.custom_nets.BranchyMLP", "model.kwargs={{in_features:784}}",
      "model.spec=tests.custom_nets.wrong_branchy_spec"], 1,
     "model.spec=tests.custom_nets.wrong_branchy_spec does not keep tests.custom_nets.BranchyMLP's function (a random permutation"),
]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("errors")
    common = [f"store_dir={tmp}/store", *TINY]
    assert call(["train", *common, f"hydra.run.dir={tmp}/runs/train"])[0] == 0
    assert call(["train", f"store_dir={tmp}/store", "model.widths=[24]", "train.epochs=1", "seeds=[0]", f"hydra.run.dir={tmp}/runs/train1"])[0] == 0
    seeds = sorted((tmp / "store").glob("mnist_small/mlp-*/seed0/best.pt"))
    by_depth = {len(torch.load(p, weights_only=True)["model"]["widths"]): p for p in seeds}
    deep = by_depth[2]
    (tmp / "corrupt.pt").write_bytes(deep.read_bytes()[:300])
    torch.save({"state_dict": {}}, tmp / "foreign.pt")
    for seed in (0, 1):  # as a training script saves them: the weights alone
        torch.save(torch.load(deep.parent.parent / f"seed{seed}" / "best.pt", weights_only=True)["state_dict"], tmp / f"plain{seed}.pt")
    plain = torch.load(tmp / "plain0.pt", weights_only=True)
    torch.save({**plain, "layers.2.weight": plain["layers.2.weight"][:5]}, tmp / "classes.pt")
    (tmp / "empty").mkdir()
    assert call(["fuse", *common, f"hydra.run.dir={tmp}/runs/good", "baselines=[]"])[0] == 0
    custom = ["model=custom", "model.target=tests.custom_nets.SmallNet", "model.kwargs={width:4}", "train.epochs=1", "seeds=[0]"]
    assert call(["train", f"store_dir={tmp}/store", *custom, f"hydra.run.dir={tmp}/runs/train_custom"])[0] == 0
    custom0 = next((tmp / "store").glob("mnist_small/custom-*/seed0/best.pt"))
    bare = ["model=custom", "model.target=tests.custom_nets.BareMLP", "model.kwargs={side:28}", "train.epochs=1", "seeds=[0]"]
    assert call(["train", f"store_dir={tmp}/store", *bare, f"hydra.run.dir={tmp}/runs/train_bare"])[0] == 0
    bare0 = next(p for p in (tmp / "store").glob("mnist_small/custom-*/seed0/best.pt") if p != custom0)
    return {"tmp": tmp, "seed0": deep, "seed1": deep.parent.parent / "seed1" / "best.pt", "shallow": by_depth[1], "custom0": custom0,
            "bare0": bare0}


def call(args: list[str]) -> tuple[int, str]:
    """Run `fusionctl ARGS` in this process; (exit code, stderr)."""
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            rc = cli.main(args)
        except SystemExit as exc:
            rc = exc.code
    return rc, err.getvalue()


def command_line(args, work, store: Path, run_dir: Path) -> list[str]:
    """A case's arguments with placeholders filled, plus the tiny defaults it does not override."""
    full = [a.format(**work) for a in args]
    if full[0] in ("train", "fuse", "landscape"):
        keys = {a.split("=", 1)[0] for a in full[1:]}
        if any(a in full for a in ("model=custom", "model=torchvision", "model=timm")):
            keys.add("model.widths")  # traced models have no widths
        full = [full[0], *[e for e in [f"store_dir={store}", *TINY] if e.split("=", 1)[0] not in keys], *full[1:]]
        if not any(a.startswith("hydra.run.dir=") for a in full):
            full.append(f"hydra.run.dir={run_dir}")
    return full


@pytest.mark.parametrize("args, code, needle", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_bad_input_gives_one_line_and_exit_code(work, args, code, needle):
    tmp = work["tmp"]
    good = tmp / "runs" / "good" / "fusion.csv"
    before = good.read_bytes()
    # without an explicit run folder the case runs in the folder of a finished job
    rc, err = call(command_line(args, work, tmp / "store", tmp / "runs" / "good"))
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert rc == code, err
    assert len(lines) == 1, err
    assert lines[0].startswith("fusionctl: error:") and needle in lines[0], lines[0]
    assert good.read_bytes() == before, "a failed run must not damage what an earlier run wrote"


def test_unconverged_solver_warns_with_a_hint(work):
    tmp = work["tmp"]
    paper = ["solver.sweeps=0", "solver.cost=weight", "baselines=[]"]
    rc, _ = call(["fuse", f"store_dir={tmp}/store", *TINY, *paper, "solver.max_iter=1", f"hydra.run.dir={tmp}/runs/warn"])
    assert rc == 0
    log = (tmp / "runs" / "warn" / "fuse.log").read_text()
    assert "did not converge for h1, h2 in solver.max_iter=1 rounds; raise solver.max_iter" in log
    rc, _ = call(["fuse", f"store_dir={tmp}/store", *TINY, *paper, "solver.ot=sinkhorn", "solver.reg=0.001", "solver.sinkhorn_iter=3",
                  f"hydra.run.dir={tmp}/runs/warn_sinkhorn"])
    assert rc == 0
    log = (tmp / "runs" / "warn_sinkhorn" / "fuse.log").read_text()
    assert "stopped at solver.sinkhorn_iter=3" in log and "raise solver.sinkhorn_iter or solver.reg" in log
    assert log.count("sinkhorn solves stopped") == 1, "one warning per fusion, not one per solve"


def test_baselines_that_permute_are_left_out_of_a_fusion_into_other_widths(work):
    """wm, am and avg need the target at the base models' widths: as baselines they are skipped with
    a line in the log (as the main solver they stop the command before anything is fused)."""
    tmp = work["tmp"]
    rc, err = call(["fuse", f"store_dir={tmp}/store", *TINY, "target.widths=[30,10]", "baselines=[wm,am,avg,ot]",
                    f"hydra.run.dir={tmp}/runs/wider"])
    assert rc == 0, err
    import pandas as pd

    table = pd.read_csv(tmp / "runs" / "wider" / "fusion.csv")
    assert set(table["method"]) == {"base", "ensemble", "wb", "ot"}
    log = (tmp / "runs" / "wider" / "fuse.log").read_text()
    for method in ("wm", "am", "avg"):
        assert f"skipping the {method} baseline: it needs the base and target widths to be equal" in log
    rc, err = call(["fuse", f"store_dir={tmp}/store", *TINY, "target.widths=[30,10]", "solver=am", "baselines=[wb]",
                    f"hydra.run.dir={tmp}/runs/wider_am"])
    assert rc == 1 and "solver=am needs every base model and the target to have the same widths" in err
    assert not list((tmp / "runs" / "wider_am").glob("fused_*.pt")), "refused before any fusion"


def test_every_case_is_documented():
    doc = (ROOT / "docs" / "errors.md").read_text()
    for args, _, needle in CASES:
        assert needle in doc, f"docs/errors.md lacks the case {' '.join(args)}"


if __name__ == "__main__":  # regenerate docs/errors.md from the real messages
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        factory = type("F", (), {"mktemp": lambda self, name: Path(d)})()
        w = work.__wrapped__(factory)
        rows = ["# Bad inputs and what fusionctl says", "",
                f"Each row is run by `tests/test_errors.py` ({len(CASES)} cases): one line on stderr, the exit code shown "
                "(2: the command line names something that does not exist; 1: a value or file is wrong), no traceback "
                "(set `FUSIONCTL_DEBUG=1` to see one), and nothing an earlier run wrote is touched. Paths are shortened.", "",
                "| command | exit | message |", "|---|---|---|"]
        for args, code, needle in CASES:
            rc, err = call(command_line(args, w, Path(d) / "store", Path(d) / "runs" / "doc"))
            msg = err.strip().splitlines()[-1].replace(d, "…").replace("|", "\\|")
            shown = " ".join(args).replace("{tmp}", "…").replace("{seed0}", "…/seed0/best.pt").replace("{seed1}", "…/seed1/best.pt")
            shown = shown.replace("{shallow}", "…/shallow/seed0/best.pt").replace("{custom0}", "…/custom/seed0/best.pt")
            shown = shown.replace("{bare0}", "…/bare/seed0/best.pt").replace("|", "\\|")
            shown = shown.replace("{{", "{").replace("}}", "}")
            rows.append(f"| `fusionctl {shown}` | {rc} | {msg} |")
        rows += ["", "A solver that stops before converging is a warning, not an error: `fusionctl fuse solver.sweeps=0 "
                 "solver.cost=weight solver.max_iter=1` logs `wb: the layer-wise pass did not converge for h1, h2 in "
                 "solver.max_iter=1 rounds; raise solver.max_iter`, and a Sinkhorn run that hits its cap logs one line "
                 "per fusion: `wb: N sinkhorn solves stopped at solver.sinkhorn_iter=3 before their marginals met the "
                 "tolerance; raise solver.sinkhorn_iter or solver.reg`.", ""]
        (ROOT / "docs" / "errors.md").write_text("\n".join(rows))
        print(f"wrote docs/errors.md with {len(CASES)} rows")
    sys.exit(0)


def test_spec_check_false_skips_the_self_check(work):
    """The escape hatch named by the check's message: the same wrong spec as the case above trains."""
    tmp = work["tmp"]
    args = ["train", "model=custom", "model.target=tests.custom_nets.BranchyMLP", "model.kwargs={{in_features:784}}",
            "model.spec=tests.custom_nets.wrong_branchy_spec", "spec_check=false"]
    rc, err = call(command_line(args, work, tmp / "store", tmp / "runs" / "unchecked"))
    assert rc == 0, err
    assert "not checked (spec_check=false)" in (tmp / "runs" / "unchecked" / "train.log").read_text()
