"""(d) Heterogeneous clients on mnist_small: hetero and Dirichlet splits with lambda by data."""

from __future__ import annotations

import pandas as pd

from sections.tables import accuracy_table, md_table


def section(run, quick: bool) -> str:
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
