"""(e) Width sweep, MLPs on mnist_small: barriers and one-shot fusion against the hidden width (Git Re-Basin's Fig. 4)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from sections.common import PAPER  # noqa: E402
from sections.tables import md_table, mean_sd  # noqa: E402

METHODS = {"wb": ("solver=wb",), "wb (paper)": ("solver=wb", *PAPER), "wm": ("solver=wm",), "am": ("solver=am",)}
STYLE = {"wb": ("C0", "-"), "wb (paper)": ("C1", "-"), "wm": ("C2", "-"), "am": ("C3", "-"),
         "naive": ("0.5", "--"), "avg": ("0.5", "--"), "base models": ("k", ":")}  # one colour per method in both panels


def section(run, quick: bool) -> str:
    widths = [8, 32] if quick else [16, 32, 64, 128, 256, 512]
    seeds = [0, 1, 2, 3] if quick else [0, 1, 2, 3, 4, 5]
    pairs = [seeds[i : i + 2] for i in range(0, len(seeds), 2)]
    epochs = 2 if quick else 20
    land = ["landscape.plane=false"] + (["landscape=fast"] if quick else [])
    frames, bars = [], []
    for w in widths:
        base = ["dataset=mnist_small", "model=mlp", f"model.widths=[{w},{w},{w}]", f"train.epochs={epochs}"]
        run("train", *base, f"seeds={seeds}")
        for p in pairs:
            s = f"seeds=[{p[0]},{p[1]}]"
            frames.append(run.fuse(str(w), *base, s, "solver=wb", "baselines=[avg,wm,am]"))
            frames.append(run.fuse(str(w), *base, s, "solver=wb", *PAPER, "baselines=[]", rename={"wb": "wb (paper)"}))
            bars += [run.landscape(str(w), label, *base, s, *overrides, *land) for label, overrides in METHODS.items()]
    fusion = pd.concat(frames)
    fusion.to_csv(run.out / "widths_fusion.csv", index=False)
    barriers = pd.concat(bars)
    barriers.to_csv(run.out / "widths_barriers.csv", index=False)
    error, accuracy = barrier_by_width(barriers), accuracy_by_width(fusion)
    plot(error, accuracy, run.out / "widths.png")
    cols = [str(w) for w in widths]
    return "\n\n".join([
        "## (e) Barriers and fusion against width, MLP 784-w-w-w-10 on mnist_small",
        f"Git Re-Basin's width experiment (their Fig. 4) with the barycenter beside it: for each hidden width w, {len(seeds)} "
        f"models trained {epochs} epochs (seeds {seeds}), {len(pairs)} seed pairs ({pairs}), no post-step. Mean ± sd over the pairs.",
        "Test error barrier (percentage points) along the naive line θ₁ → θ₂ and the aligned line θ₁ → π(θ₂) of each "
        "method (`fusionctl landscape landscape.plane=false`; `wb` is the default, `wb (paper)` is "
        "`solver.sweeps=0 solver.cost=weight`, `wm`/`am` Git Re-Basin's weight and activation matching):",
        md_table(table(error, cols)),
        "One-shot fused test accuracy (%) of the same pairs (`fusionctl fuse`; `base models` is the mean of the bases):",
        md_table(table(accuracy, cols)),
        "![barrier and fused accuracy against width](/docs/results/widths.png)",
    ])


def barrier_by_width(barriers: pd.DataFrame) -> pd.DataFrame:
    """One row per (method, width, pair): the test error barrier; the naive line listed once as "naive"."""
    t = barriers[(barriers.split == "test") & (barriers["post"].fillna("none") == "none")].copy()
    t["method"] = t["method"].where(t["line"].str.startswith("aligned"), "naive")
    t = t.drop_duplicates(subset=["setting", "seeds", "method"])
    return t.rename(columns={"setting": "width", "error_barrier": "value"})[["method", "width", "seeds", "value"]]


def accuracy_by_width(fusion: pd.DataFrame) -> pd.DataFrame:
    t = fusion[(fusion.split == "test") & (fusion.post == "none") & (fusion.role != "ensemble")].copy()
    t["method"] = t["method"].where(t.role != "base", "base models")
    t["value"] = t["accuracy"] * 100
    t = t.drop_duplicates(subset=["setting", "method", "seed"])  # each pair's bases are in both of its fuse tables
    return t.rename(columns={"setting": "width"})[["method", "width", "value"]]


def table(values: pd.DataFrame, cols: list[str]) -> pd.DataFrame:
    """Mean ± sd over pairs per width, and the mean over widths of those means."""
    rows = []
    for method, df in values.groupby("method", sort=False):
        cells = {c: mean_sd(df[df.width == c]["value"]) if (df.width == c).any() else "—" for c in cols}
        rows.append({"method": method, **cells, "mean over widths": f"{df.groupby('width')['value'].mean().mean():.2f}"})
    return pd.DataFrame(rows)


def plot(error: pd.DataFrame, accuracy: pd.DataFrame, path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, values, ylabel in ((axes[0], error, "test error barrier (pts)"), (axes[1], accuracy, "one-shot fused test accuracy (%)")):
        for method, df in values.groupby("method", sort=False):
            mean = df.groupby(df["width"].astype(int))["value"].mean()
            color, linestyle = STYLE[method]
            ax.plot(mean.index, mean.values, marker="o", label=method, color=color, linestyle=linestyle)
        ax.set_xscale("log", base=2)
        if values is error:
            ax.set_yscale("symlog", linthresh=1)  # aligned barriers of a point or two beside naive ones of 50
            ax.set_ylim(bottom=0)
        ax.set_xlabel("hidden width w (MLP 784-w-w-w-10)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"mnist_small, mean of {len(error.seeds.unique())} seed pairs (scripts/reproduce.py --sections widths)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
