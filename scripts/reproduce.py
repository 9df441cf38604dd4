#!/usr/bin/env python3
"""Reproduce the paper's claims with the peers alongside, on data available offline.

Each section trains base models with `fusionctl train`, fuses and draws landscapes with
`fusionctl fuse` / `fusionctl landscape`, and writes docs/results/<section>.md plus the raw
tables (<section>_fusion.csv, <section>_barriers.csv); docs/results.md collects the sections.

    .venv/bin/python scripts/reproduce.py                           # CPU sections: mlp hetero recurrent
    .venv/bin/python scripts/reproduce.py --sections mlp            # one section
    python3 scripts/reproduce.py --sections cnn cnn_paper --device cuda   # on a GPU machine
    .venv/bin/python scripts/reproduce.py --report-only             # rebuild docs/results.md
    .venv/bin/python scripts/reproduce.py --quick --out /tmp/r      # tiny settings, to check the script

The same sections with dataset=mnist or cifar10 (see configs/experiment/) are the paper-size runs.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
PAPER = ("solver.sweeps=0", "solver.cost=weight")  # the paper's layer-wise WB
ORDER = ["mlp", "hetero", "recurrent", "recurrent_fashion", "cnn", "cnn_paper", "gpu_timing"]
CPU_SECTIONS = ["mlp", "hetero", "recurrent"]


class Runner:
    def __init__(self, args):
        self.args = args
        self.out = Path(args.out)
        self.runs = Path(args.runs)
        self.store = self.runs / "store"
        self.lock = threading.Lock()  # configs may run in parallel threads (--parallel)
        self.runs.mkdir(parents=True, exist_ok=True)
        self.log = open(self.runs / "reproduce.log", "a")
        # A re-run reuses every command that finished before in this runs folder (unless --fresh),
        # so an interrupted reproduction resumes instead of starting over.
        folders = sorted(p.parent for p in self.runs.glob("*/cmd.txt"))
        self.done = {} if args.fresh else {(f / "cmd.txt").read_text(): f for f in folders}
        self.n = max((int(p.name.split("_")[0]) for p in self.runs.glob("[0-9]*_*")), default=0)

    def __call__(self, command: str, *overrides: str) -> Path:
        key = " ".join([command, *overrides, f"device={self.args.device}"])
        if key in self.done:
            print(f"  (done)  fusionctl {command} {' '.join(overrides)}", flush=True)
            return self.done[key]
        with self.lock:
            self.n += 1
            folder = self.runs / f"{self.n:03d}_{command}"
        cmd = [sys.executable, "-m", "fusionctl.cli", command, *overrides, f"store_dir={self.store}",
               f"device={self.args.device}", f"hydra.run.dir={folder}"]
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "MPLBACKEND": "Agg"})
        with self.lock:
            self.log.write(f"$ {' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}\n")
            self.log.flush()
        if proc.returncode != 0:
            raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-2000:]}")
        (folder / "cmd.txt").write_text(key)
        print(f"  {time.perf_counter() - start:6.1f}s  fusionctl {command} {' '.join(overrides)}", flush=True)
        return folder

    def fuse(self, tag: str, *overrides: str, rename: dict | None = None) -> pd.DataFrame:
        t = pd.read_csv(self("fuse", *overrides) / "fusion.csv")
        if rename:
            t["method"] = t["method"].replace(rename)
        return t.assign(setting=tag)

    def landscape(self, tag: str, label: str, *overrides: str) -> pd.DataFrame:
        return pd.read_csv(self("landscape", *overrides) / "barriers.csv").assign(setting=tag, method=label)


def md_table(df: pd.DataFrame, floatfmt: str = "{:.2f}") -> str:
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, row in df.iterrows():
        cells = [floatfmt.format(v) if isinstance(v, float) else str(v) for v in row.tolist()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def mean_sd(series: pd.Series) -> str:
    if len(series) == 1:
        return f"{series.iloc[0]:.2f}"
    return f"{series.mean():.2f} ± {series.std(ddof=1):.2f}"


def accuracy_table(fusion: pd.DataFrame, settings: list[str], split: str = "test") -> pd.DataFrame:
    """Rows: method (+post, stage); columns: settings; cells: accuracy % mean ± sd over runs."""
    t = fusion[fusion.split == split].copy()
    t["model"] = t["method"] + t["post"].map(lambda p: "" if p == "none" else f" +{p}") + t["stage"].map(lambda s: "" if s == "one-shot" else f" ({s})")
    t.loc[t.role == "base", "model"] = "base models" + t.loc[t.role == "base", "stage"].map(lambda s: "" if s == "one-shot" else f" ({s})")
    t["accuracy"] *= 100
    order = list(dict.fromkeys(t["model"]))
    out = pd.DataFrame({"model": order})
    for s in settings:
        sub = t[t.setting == s]
        out[s] = [mean_sd(sub[sub.model == m]["accuracy"]) if (sub.model == m).any() else "—" for m in order]
    return out


def barrier_table(barriers: pd.DataFrame) -> pd.DataFrame:
    """Per method and line: loss barrier (train), error barrier (test), midpoint accuracy (test).

    A naive line does not depend on the method's couplings: it is listed once, under "none".
    """
    naive = barriers["line"].str.startswith("naive")
    head = barriers["method"].str.extract(r"^(.*: )")[0].fillna("")  # "resnet20: " when methods carry a setting
    barriers = barriers.assign(method=barriers["method"].where(~naive, head + "none"))
    barriers = barriers.drop_duplicates(subset=["setting", "seeds", "line", "split", "method"])
    rows = []
    for (method, line), df in barriers.groupby(["method", "line"], sort=False):
        tr, te = df[df.split == "train"], df[df.split == "test"]
        rows.append({"method": method, "line": line, "train loss barrier": mean_sd(tr["loss_barrier"]),
                     "test error barrier (pts)": mean_sd(te["error_barrier"]), "test midpoint acc (%)": mean_sd(te["midpoint_accuracy"]),
                     "runs": len(te)})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------


def section_mlp(run: Runner, quick: bool) -> str:
    widths = "[48,24]" if quick else "[400,200,100]"
    base = ["dataset=mnist_small", "model=mlp", f"model.widths={widths}", f"train.epochs={2 if quick else 20}"]
    seeds = [0, 1, 2, 3] if quick else [0, 1, 2, 3, 4, 5]
    pairs = [seeds[i : i + 2] for i in range(0, len(seeds), 2)]
    run("train", *base, f"seeds={seeds}")
    peers = "baselines=[avg,ot,wm,am]"
    frames = []
    for p in pairs:
        s = f"seeds=[{p[0]},{p[1]}]"
        frames.append(run.fuse("K=2", *base, s, "solver=wb", peers))
        frames.append(run.fuse("K=2", *base, s, "solver=wb", *PAPER, "baselines=[]", rename={"wb": "wb (paper)"}))
        frames.append(run.fuse("K=2", *base, s, "solver=wb", "solver.ot=sinkhorn", "solver.reg=0.01", "baselines=[]",
                               rename={"wb": "wb (sinkhorn ε=0.01)"}))
    for k in (4, 6):
        if k <= len(seeds):
            frames.append(run.fuse(f"K={k}", *base, f"seeds={seeds[:k]}", "solver=wb", peers))
            frames.append(run.fuse(f"K={k}", *base, f"seeds={seeds[:k]}", "solver=wb", *PAPER, "baselines=[]", rename={"wb": "wb (paper)"}))
    narrow, wide = ("[24,12]", "[96,48]") if quick else ("[200,100,50]", "[800,400,200]")
    frames.append(run.fuse("narrower", *base, "seeds=[0,1]", f"target.widths={narrow}", "baselines=[ot]"))
    frames.append(run.fuse("wider", *base, "seeds=[0,1]", f"target.widths={wide}", "baselines=[ot]"))
    fusion = pd.concat(frames)
    fusion.to_csv(run.out / "mlp_fusion.csv", index=False)
    land = ["landscape.plane=false", "post=[repair]"] + (["landscape=fast"] if quick else [])
    bars = []
    for p in pairs:
        s = f"seeds=[{p[0]},{p[1]}]"
        bars.append(run.landscape("K=2", "wb", *base, s, "solver=wb", *land))
        bars.append(run.landscape("K=2", "wb (paper)", *base, s, "solver=wb", *PAPER, *land))
        bars.append(run.landscape("K=2", "wm", *base, s, "solver=wm", *land))
        bars.append(run.landscape("K=2", "am", *base, s, "solver=am", *land))
    barriers = pd.concat(bars)
    barriers.to_csv(run.out / "mlp_barriers.csv", index=False)
    settings = [s for s in ["K=2", "K=4", "K=6", "narrower", "wider"] if s in set(fusion.setting)]
    return "\n\n".join([
        f"## (a) One-shot fusion, MLP {widths} on mnist_small",
        f"Test accuracy (%), mean ± sd over {len(pairs)} seed pairs for K = 2 (seeds {pairs}); K = 4 and 6 use the first "
        f"K seeds; `narrower`/`wider` fuse seeds 0 and 1 into hidden widths {narrow} / {wide}. `wb` is fusionctl's default "
        "(exact OT, layer-wise pass plus whole-network sweeps, cost chosen on the validation split); `wb (paper)` is the "
        "paper's layer-wise algorithm (`solver.sweeps=0 solver.cost=weight`); `ot` is Singh & Jaggi; `wm`/`am` are Git "
        "Re-Basin's weight (MergeMany for K > 2) and activation matching; `ensemble` averages the base models' predicted "
        "probabilities (not a single network).",
        md_table(accuracy_table(fusion, settings)),
        "## (b) Linear mode connectivity, MLP",
        "Barriers along the naive line θ₁ → θ₂ and the aligned line θ₁ → π(θ₂) for each method's couplings, with and "
        "without REPAIR applied at every point (Entezari et al. barrier; loss in nats on the training split, error in "
        "percentage points on the test set; mean ± sd over seed pairs).",
        md_table(barrier_table(barriers)),
    ])


def section_hetero(run: Runner, quick: bool) -> str:
    widths = "[48,24]" if quick else "[400,200,100]"
    base = ["dataset=mnist_small", "model=mlp", f"model.widths={widths}", f"train.epochs={2 if quick else 20}"]
    peers = "baselines=[avg,ot,wm,am]"
    hetero = [*base, "dataset.split=hetero", "dataset.hetero_class=4", "seeds=[0,1]"]
    train = pd.read_csv(run("train", *hetero) / "train.csv")
    n = train["train_samples"].tolist()
    frames = [run.fuse("hetero, λ uniform", *hetero, "solver=wb", peers),
              run.fuse("hetero, λ ∝ data", *hetero, "solver=wb", peers, f"weights=[{n[0]},{n[1]}]")]
    diri = [*base, "dataset.split=dirichlet", "dataset.clients=4", "dataset.dirichlet_alpha=0.5", "seeds=[0,1,2,3]"]
    train4 = pd.read_csv(run("train", *diri) / "train.csv")
    n4 = train4["train_samples"].tolist()
    frames.append(run.fuse("Dirichlet(0.5), K=4, λ ∝ data", *diri, "solver=wb", peers, f"weights=[{','.join(map(str, n4))}]"))
    fusion = pd.concat(frames)
    fusion.to_csv(run.out / "hetero_fusion.csv", index=False)
    per_base = fusion[(fusion.role == "base") & (fusion.split == "test")][["setting", "seed", "accuracy"]].drop_duplicates()
    per_base["accuracy"] = (per_base["accuracy"] * 100).round(2)
    return "\n\n".join([
        f"## (d) Heterogeneous data, MLP {widths} on mnist_small",
        f"`hetero` (METHOD.md D.2 row 4): client 0 trains on every digit 4 plus 10 % of the other digits ({n[0]} images), "
        f"client 1 on the remaining 90 % of the other digits ({n[1]} images, no 4s). `Dirichlet(0.5)`: per class, the "
        f"share of each of 4 clients is drawn from Dirichlet(0.5) (client sizes {n4}). Every model is evaluated on the "
        "whole test set (test accuracy %).",
        md_table(accuracy_table(fusion, list(dict.fromkeys(fusion.setting)))),
        "Base models one by one (test accuracy %):",
        md_table(per_base),
    ])


def section_recurrent(run: Runner, quick: bool, dataset: str = "seq_mnist_small", epochs: int = 20, stem: str = "recurrent",
                      samples: int = 0) -> str:
    """samples > 0: barrier lines on that many training and test samples (whole splits otherwise)."""
    frames, bars = [], []
    kinds = ["rnn", "lstm", "gru"]
    dataset = "seq_mnist_small" if quick else dataset
    for kind in kinds:
        base = [f"dataset={dataset}", f"model={kind}", f"model.widths=[{16 if quick else 128}]", "optim=adam",
                f"train.epochs={1 if quick else epochs}", "seeds=[0,1]"]
        run("train", *base)
        frames.append(run.fuse(kind, *base, "solver=gwb", "baselines=[avg,ot,wm,am]"))
        frames.append(run.fuse(kind, *base, "solver=wb", *PAPER, "baselines=[]", rename={"wb": "wb (paper, no hidden)"}))
        frames.append(run.fuse(kind, *base, "solver=wb", "baselines=[]", rename={"wb": "wb (default, no hidden)"}))
        for alpha in (0.1, 10.0):
            frames.append(run.fuse(kind, *base, "solver=gwb", f"solver.alpha={alpha}", "baselines=[]", rename={"gwb": f"gwb (α={alpha:g})"}))
        if run.args.gwb_sinkhorn:
            frames.append(run.fuse(kind, *base, "solver=gwb", "solver.ot=sinkhorn", "baselines=[]", rename={"gwb": "gwb (sinkhorn)"}))
        land = ["landscape.plane=false"] + (["landscape=fast"] if quick else [])
        land += [f"landscape.train_samples={samples}", f"landscape.test_samples={samples}"] if samples and not quick else []
        bars.append(run.landscape(kind, "gwb", *base, "solver=gwb", *land))
        bars.append(run.landscape(kind, "wb (paper, no hidden)", *base, "solver=wb", *PAPER, *land))
    fusion = pd.concat(frames)
    fusion.to_csv(run.out / f"{stem}_fusion.csv", index=False)
    barriers = pd.concat(bars)
    barriers.to_csv(run.out / f"{stem}_barriers.csv", index=False)
    bar = barriers.assign(method=barriers["setting"] + ": " + barriers["method"])
    times = fusion[fusion.role == "fused"].groupby(["setting", "method"], sort=False)["fuse_time_s"].max().round(2).reset_index()
    return "\n\n".join([
        f"## (c) Recurrent networks on {dataset} (hidden {16 if quick else 128}, rows as time steps, {1 if quick else epochs} epochs)",
        "Test accuracy (%) for seeds 0 and 1. `gwb` matches hidden units on their input weights and, through the "
        "Gromov-Wasserstein term, on their hidden-to-hidden weights (α = 1: a recurrent row weighs like an input row); "
        "`wb (paper, no hidden)` is the same barycenter ignoring hidden-to-hidden weights while matching (the FedMA-style "
        "ablation); `wb (default, no hidden)` is fusionctl's default WB, which also ignores them.",
        md_table(accuracy_table(fusion, kinds)),
        f"Barriers (one seed pair{f'; {samples} training and test samples' if samples and not quick else ''}):",
        md_table(barrier_table(bar)),
        "Fuse time (s) per method:",
        md_table(times),
    ])


def cnn_runs(run: Runner, quick: bool, configs: list[tuple[str, list[str]]], epochs: int, finetune: int, landscape: bool) -> tuple:
    def one(tag: str, model: list[str]):
        frames, bars = [], []
        base = ["dataset=fashion_mnist", *model, f"train.epochs={epochs}", "train.batch_size=128", "optim.lr=0.05",
                "optim.momentum=0.9", "optim.weight_decay=0.0005", "optim.schedule=cosine", "optim.warmup_epochs=1", "seeds=[0,1]"]
        if quick:
            base += ["dataset=mnist_small"]
        if run.args.parallel > 1:
            base += [f"threads={max(1, (os.cpu_count() or 2) // run.args.parallel)}"]
        run("train", *base)
        frames.append(run.fuse(tag, *base, "solver=wb", "baselines=[avg,ot,wm,am]", "post=[bn_reset,repair]"))
        frames.append(run.fuse(tag, *base, "solver=wb", *PAPER, "baselines=[]", "post=[bn_reset,repair]", rename={"wb": "wb (paper)"}))
        if finetune:
            tuned = run.fuse(tag, *base, "solver=wb", "baselines=[]", f"finetune.epochs={finetune}", "finetune.batch_size=128")
            frames.append(tuned[tuned.stage == "finetuned"])
        if landscape:
            bn = "landscape.bn_reset=true" if "model.batch_norm=true" in model else "landscape.bn_reset=false"
            pts, n = run.args.cnn_points, run.args.cnn_samples
            land = ["landscape.plane=false", f"landscape.points={pts}", f"landscape.train_samples={n}", f"landscape.test_samples={n}", "post=[repair]", bn]
            solvers = (("wb", ["solver=wb"]), ("wb (paper)", ["solver=wb", *PAPER]), ("wm", ["solver=wm"]), ("am", ["solver=am"]))
            for label, solver in solvers:
                if label in run.args.cnn_landscapes:
                    bars.append(run.landscape(tag, label, *base, *solver, *land))
        return frames, bars

    with ThreadPoolExecutor(max_workers=max(1, run.args.parallel)) as pool:
        results = list(pool.map(lambda c: one(*c), configs))
    frames = [f for r in results for f in r[0]]
    bars = [b for r in results for b in r[1]]
    return pd.concat(frames), (pd.concat(bars) if bars else None)


def section_cnn(run: Runner, quick: bool) -> str:
    w = "[4,4,8,8,8,8,8,8,8,8]" if quick else "[16,32,64,64,128,128,128,128,128,128]"
    r = "[4,8,8]" if quick else run.args.resnet_widths
    configs = [("vgg11 small", ["model=vgg11", f"model.widths={w}", "model.batch_norm=false"]),
               ("vgg11 small +BN", ["model=vgg11", f"model.widths={w}", "model.batch_norm=true"]),
               ("resnet20", ["model=resnet20", f"model.widths={r}", "model.batch_norm=false", "optim.clip_grad=1.0"]),
               ("resnet20 +BN", ["model=resnet20", f"model.widths={r}", "model.batch_norm=true"])]
    configs = sorted((c for c in configs if c[0] in run.args.cnn_configs), key=lambda c: run.args.cnn_configs.index(c[0]))
    epochs, finetune = (1, 1) if quick else (run.args.cnn_epochs, run.args.cnn_finetune)
    fusion, barriers = cnn_runs(run, quick, configs, epochs, finetune, True)
    fusion.to_csv(run.out / "cnn_fusion.csv", index=False)
    barriers.to_csv(run.out / "cnn_barriers.csv", index=False)
    bar = barriers.assign(method=barriers["setting"] + ": " + barriers["method"])
    return "\n\n".join([
        f"## CNNs on Fashion-MNIST (small widths: vgg11 {w}, resnet20 {r})",
        f"Full Fashion-MNIST (54,000 train / 6,000 validation / 10,000 test), SGD lr 0.05 momentum 0.9 wd 5e-4, cosine "
        f"schedule with 1 warm-up epoch, batch 128, {epochs} epochs, seeds 0 and 1, device {run.args.device}; resnet20 without "
        f"BN clips gradients at norm 1 (without it seed 1 stalls at chance). Test accuracy "
        f"(%); `+bn_reset` recomputes BatchNorm statistics, `+repair` is REPAIR (Jordan et al.); `finetuned` trains every "
        f"WB-fused model and both base models {finetune} more epochs (SGD lr 0.01, momentum 0.9).",
        md_table(accuracy_table(fusion, [c[0] for c in configs])),
        f"Barriers ({run.args.cnn_points} points per line, {run.args.cnn_samples} training and test samples; BatchNorm statistics "
        "reset at every point for BN models):",
        md_table(barrier_table(bar)),
    ])


def section_cnn_paper(run: Runner, quick: bool) -> str:
    configs = [("vgg11 (paper widths, no BN, no bias)", ["model=vgg11", "model.batch_norm=false"] + (["model.widths=[4,4,8,8,8,8,8,8,8,8]"] if quick else [])),
               ("resnet18 (paper widths, no BN, no bias)", ["model=resnet18", "model.batch_norm=false"] + (["model.widths=[4,4,8,8]"] if quick else []))]
    epochs = 1 if quick else run.args.paper_epochs
    fusion, _ = cnn_runs(run, quick, configs, epochs, 0, False)
    fusion.to_csv(run.out / "cnn_paper_fusion.csv", index=False)
    return "\n\n".join([
        "## Paper-size VGG11 and ResNet18 on Fashion-MNIST",
        f"The paper's architectures (VGG11: 64…512 channels, fc 512; ResNet18: 64/128/256/512; no BN, no biases) on full "
        f"Fashion-MNIST for {epochs} epochs (CIFAR-10 is not available offline; `configs/experiment/*_cifar10_paper.yaml` "
        f"hold the paper's CIFAR protocol), device {run.args.device}. Test accuracy (%).",
        md_table(accuracy_table(fusion, [c[0] for c in configs])),
    ])


def section_gpu_timing(run: Runner, quick: bool) -> str:
    """Training and the 21x21 plane on the CPU and on the device, in the same process tree."""
    import torch

    rows = []
    for device in dict.fromkeys(["cpu", run.args.device]):
        store = f"store_dir={run.runs / f'timing_{device}'}"
        cmd = ["train", "dataset=mnist_small", "model=mlp", f"train.epochs={2 if quick else 20}", "seeds=[0]", store]
        start = time.perf_counter()
        run.args.device, saved = device, run.args.device
        run(*cmd)
        run.args.device = saved
        train_s = time.perf_counter() - start
        bench = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_landscape.py"), "--device", device] + (["--grid", "5"] if quick else []),
                               cwd=ROOT, capture_output=True, text=True, check=True).stdout
        plane = next(line for line in bench.splitlines() if line.startswith("(b)"))
        ratio = next(line for line in bench.splitlines() if line.startswith("ratio"))
        rows.append({"device": device, "train 1 MLP, 20 epochs (s, incl. start-up)": round(train_s, 1),
                     "21x21 plane": plane.split(":", 1)[1].strip(), "plane / raw forward": ratio.split(":", 1)[1].split("(")[0].strip()})
    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return "\n\n".join(["## Timing: CPU and GPU", f"MLP 784-400-200-100-10 on mnist_small; GPU: {name}; CPU: {os.cpu_count()} cores of the same machine.",
                         md_table(pd.DataFrame(rows)),
                         f"The same fusion of the same two CPU-trained models, run with device=cpu and device={run.args.device} "
                         "(exact OT solves on the CPU either way; Sinkhorn and the barycenter updates run on the device):",
                         md_table(device_agreement(run, quick), floatfmt="{:.3g}")])


def device_agreement(run: Runner, quick: bool) -> pd.DataFrame:
    import torch

    device = run.args.device
    base = ["dataset=mnist_small", "model=mlp", f"train.epochs={1 if quick else 5}", "seeds=[0,1]", "baselines=[]"]
    run.args.device = "cpu"
    run("train", *base[:-1])
    rows = []
    for label, solver in (("wb exact", ["solver.ot=exact"]), ("wb sinkhorn", ["solver.ot=sinkhorn", "solver.reg=0.05"])):
        out = {}
        for dev in ("cpu", device):
            run.args.device = dev
            folder = run("fuse", *base, "solver=wb", *solver)
            table = pd.read_csv(folder / "fusion.csv")
            acc = table[(table.method == "wb") & (table.split == "test")]["accuracy"].iloc[0] * 100
            out[dev] = (torch.load(folder / "fused_wb.pt", weights_only=True)["state_dict"], acc)
        diff = max(float((out["cpu"][0][k] - out[device][0][k]).abs().max()) for k in out["cpu"][0])
        rows.append({"fusion": label, "test acc cpu (%)": out["cpu"][1], f"test acc {device} (%)": out[device][1], "max abs weight difference": diff})
    run.args.device = device
    return pd.DataFrame(rows)


def section_recurrent_fashion(run: Runner, quick: bool) -> str:
    return section_recurrent(run, quick, "seq_fashion_mnist", run.args.fashion_epochs, "recurrent_fashion", samples=5000)


SECTIONS = {"mlp": section_mlp, "hetero": section_hetero, "recurrent": section_recurrent, "recurrent_fashion": section_recurrent_fashion, "cnn": section_cnn,
            "cnn_paper": section_cnn_paper, "gpu_timing": section_gpu_timing}


def machine() -> str:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.machine()}, {os.cpu_count()} CPU cores, {gpu}, Python {platform.python_version()}, torch {torch.__version__}"


def write_report(out: Path, target: Path) -> None:
    parts = ["# fusionctl results", "Generated by `scripts/reproduce.py` (command and machine under each section). "
             "Every number is measured by the commands the script runs; raw tables are the CSV files beside each "
             "section in `docs/results/`.", (out / "reading.md").read_text() if (out / "reading.md").is_file() else ""]
    for name in ORDER:
        path = out / f"{name}.md"
        if path.is_file():
            parts.append(path.read_text())
    target.write_text("\n\n".join(p for p in parts if p) + "\n")
    print(f"wrote {target}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sections", nargs="+", default=CPU_SECTIONS, choices=ORDER)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=str(ROOT / "docs" / "results"))
    ap.add_argument("--runs", default=str(ROOT / "outputs" / "reproduce"))
    ap.add_argument("--quick", action="store_true", help="tiny widths and epochs, to check the script itself")
    ap.add_argument("--cnn-epochs", type=int, default=10)
    ap.add_argument("--cnn-finetune", type=int, default=2)
    ap.add_argument("--cnn-points", type=int, default=9)
    ap.add_argument("--cnn-samples", type=int, default=5000)
    ap.add_argument("--paper-epochs", type=int, default=4)
    ap.add_argument("--cnn-landscapes", nargs="+", default=["wb", "wb (paper)", "wm", "am"])
    ap.add_argument("--cnn-configs", nargs="+", default=["vgg11 small", "vgg11 small +BN", "resnet20", "resnet20 +BN"])
    ap.add_argument("--resnet-widths", default="[16,32,64]")
    ap.add_argument("--parallel", type=int, default=1, help="CNN configurations run at once (a GPU machine)")
    ap.add_argument("--fashion-epochs", type=int, default=2, help="recurrent_fashion: epochs on the 54,000 sequences")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--fresh", action="store_true", help="re-run commands that finished before in --runs")
    ap.add_argument("--gwb-sinkhorn", action="store_true", help="recurrent: also GWB with Sinkhorn (minutes per model on 2 cores)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        run = Runner(args)
        for name in args.sections:
            print(f"[{name}]", flush=True)
            start = time.perf_counter()
            body = SECTIONS[name](run, args.quick)
            minutes = (time.perf_counter() - start) / 60
            cmd = f"python scripts/reproduce.py --sections {name} --device {args.device}" + (" --quick" if args.quick else "")
            footer = f"_Regenerate: `{cmd}` — {minutes:.1f} min on {machine()}._"
            (out / f"{name}.md").write_text(body + "\n\n" + footer + "\n")
    if args.out == str(ROOT / "docs" / "results"):
        write_report(out, ROOT / "docs" / "results.md")


if __name__ == "__main__":
    main()
