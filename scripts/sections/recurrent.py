"""(c) Recurrent nets (RNN, LSTM, GRU) on image rows: GWB against its no-hidden ablation and the peers."""

from __future__ import annotations

import pandas as pd

from sections.common import PAPER
from sections.tables import accuracy_table, barrier_table, md_table


def section(run, quick: bool, dataset: str = "seq_mnist_small", epochs: int = 20, stem: str = "recurrent",
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
        frames.append(run.fuse(kind, *base, "solver=gwb", *PAPER, "baselines=[]", rename={"gwb": "gwb (paper)"}))
        frames.append(run.fuse(kind, *base, "solver=wb", *PAPER, "baselines=[]", rename={"wb": "wb (paper, no hidden)"}))
        frames.append(run.fuse(kind, *base, "solver=wb", "baselines=[]", rename={"wb": "wb (default, no hidden)"}))
        for alpha in (0.1, 10.0):
            frames.append(run.fuse(kind, *base, "solver=gwb", f"solver.alpha={alpha}", "baselines=[]", rename={"gwb": f"gwb (α={alpha:g})"}))
        if run.args.gwb_sinkhorn:
            frames.append(run.fuse(kind, *base, "solver=gwb", "solver.ot=sinkhorn", "baselines=[]", rename={"gwb": "gwb (sinkhorn)"}))
        land = ["landscape.plane=false"] + (["landscape=fast"] if quick else [])
        land += [f"landscape.train_samples={samples}", f"landscape.test_samples={samples}"] if samples and not quick else []
        bars.append(run.landscape(kind, "gwb", *base, "solver=gwb", *land))
        bars.append(run.landscape(kind, "gwb (paper)", *base, "solver=gwb", *PAPER, *land))
        bars.append(run.landscape(kind, "wb (paper, no hidden)", *base, "solver=wb", *PAPER, *land))
    fusion = pd.concat(frames)
    fusion.to_csv(run.out / f"{stem}_fusion.csv", index=False)
    barriers = pd.concat(bars)
    barriers.to_csv(run.out / f"{stem}_barriers.csv", index=False)
    bar = barriers.assign(method=barriers["setting"] + ": " + barriers["method"])
    times = fusion[fusion.role == "fused"].groupby(["setting", "method"], sort=False)["fuse_time_s"].max().round(2).reset_index()
    return "\n\n".join([
        f"## (c) Recurrent networks on {dataset} (hidden {16 if quick else 128}, rows as time steps, {1 if quick else epochs} epochs)",
        "Test accuracy (%) for seeds 0 and 1. `gwb (paper)` is the paper's GWB (`solver.sweeps=0 solver.cost=weight`): "
        "one layer-wise pass matching hidden units on their input weights and, through the Gromov-Wasserstein term, on "
        "their hidden-to-hidden weights (α = 1: a recurrent row weighs like an input row); `gwb` is fusionctl's default "
        "GWB, that pass followed by whole-network sweeps with the hidden-to-hidden term linearised at the current "
        "coupling, its cost chosen on held-out data (`cost=auto`), as wb's; `wb (paper, no hidden)` is the paper's "
        "barycenter ignoring hidden-to-hidden weights while matching (the FedMA-style ablation); `wb (default, no hidden)` "
        "is fusionctl's default WB, which also ignores them; the α rows vary the default GWB's α.",
        md_table(accuracy_table(fusion, kinds)),
        f"Barriers (one seed pair{f'; {samples} training and test samples' if samples and not quick else ''}):",
        md_table(barrier_table(bar)),
        "Fuse time (s) per method:",
        md_table(times),
    ])




def section_fashion(run, quick: bool) -> str:
    return section(run, quick, "seq_fashion_mnist", run.args.fashion_epochs, "recurrent_fashion", samples=5000)
