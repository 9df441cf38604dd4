"""CNNs on Fashion-MNIST: small VGG11 and ResNet20 (with and without BN), and the paper-size nets."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import pandas as pd

from sections.common import PAPER
from sections.tables import accuracy_table, barrier_table, md_table


def cnn_runs(run, quick: bool, configs: list[tuple[str, list[str]]], epochs: int, finetune: int, landscape: bool) -> tuple:
    def one(tag: str, model: list[str], last: tuple[str, ...] = ()):
        frames, bars = [], []
        base = ["dataset=fashion_mnist", *model, f"train.epochs={epochs}", "train.batch_size=128", "optim.lr=0.05",
                "optim.momentum=0.9", "optim.weight_decay=0.0005", "optim.schedule=cosine", "optim.warmup_epochs=1", "seeds=[0,1]", *last]
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
            post = "post=[bn_reset,repair]" if "model.batch_norm=true" in model else "post=[repair]"
            pts, n = run.args.cnn_points, run.args.cnn_samples
            land = ["landscape.plane=false", f"landscape.points={pts}", f"landscape.train_samples={n}", f"landscape.test_samples={n}", post]
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


def barriers_md(run, barriers: pd.DataFrame) -> str:
    """A CNN section's barrier caption and table, one line per setting and method."""
    bar = barriers.assign(method=barriers["setting"] + ": " + barriers["method"])
    return "\n\n".join([
        f"Barriers ({run.args.cnn_points} points per line, {run.args.cnn_samples} training and test samples; a line marked "
        "+bn_reset or +repair applies that step at every point, the plain line keeps the interpolated statistics):",
        md_table(barrier_table(bar)),
    ])


def section(run, quick: bool) -> str:
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
    return "\n\n".join([
        f"## CNNs on Fashion-MNIST (small widths: vgg11 {w}, resnet20 {r})",
        f"Full Fashion-MNIST (54,000 train / 6,000 validation / 10,000 test), SGD lr 0.05 momentum 0.9 wd 5e-4, cosine "
        f"schedule with 1 warm-up epoch, batch 128, {epochs} epochs, seeds 0 and 1, device {run.args.device}; resnet20 without "
        f"BN clips gradients at norm 1 (without it seed 1 stalls at chance). Test accuracy "
        f"(%); `+bn_reset` recomputes BatchNorm statistics, `+repair` is REPAIR (Jordan et al.); `finetuned` trains every "
        f"WB-fused model and both base models {finetune} more epochs (SGD lr 0.01, momentum 0.9).",
        md_table(accuracy_table(fusion, [c[0] for c in configs])),
        barriers_md(run, barriers),
    ])


def section_paper(run, quick: bool) -> str:
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


def section_gpu(run, quick: bool) -> str:
    """Issue 12's table on a GPU machine: paper-width VGG11 (no BN) and ResNet20 x4 (+BN), 8 epochs."""
    v = ["model.widths=[4,4,8,8,8,8,8,8,8,8]"] if quick else []
    r = "[4,8,8]" if quick else "[64,128,256]"
    configs = [("vgg11 (paper widths, no BN)", ["model=vgg11", *v, "model.batch_norm=false", "optim.clip_grad=1.0"]),
               (f"resnet20 {r} +BN", ["model=resnet20", f"model.widths={r}", "model.batch_norm=true"], ("optim.lr=0.1",))]
    epochs = 1 if quick else run.args.gpu_epochs
    fusion, barriers = cnn_runs(run, quick, configs, epochs, 0, True)
    fusion.to_csv(run.out / "cnn_gpu_fusion.csv", index=False)
    barriers.to_csv(run.out / "cnn_gpu_barriers.csv", index=False)
    return "\n\n".join([
        "## CNNs on Fashion-MNIST at full width (GPU)",
        f"Full Fashion-MNIST, SGD lr 0.05 (resnet20: 0.1) momentum 0.9 wd 5e-4, cosine schedule with 1 warm-up epoch, batch 128, "
        f"{epochs} epochs, seeds 0 and 1, device {run.args.device}; vgg11 clips gradients at norm 1. Test accuracy (%); `wb` is "
        "fusionctl's default, `wb (paper)` the paper's layer-wise pass (`solver.sweeps=0 solver.cost=weight`).",
        md_table(accuracy_table(fusion, [c[0] for c in configs])),
        barriers_md(run, barriers),
    ])
