"""Figures with matplotlib's object API only (no pyplot state), saved as PNG and PDF."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter, NullFormatter

from fusionctl.store import atomic_path

LINE_STYLES = {"naive": ("tab:red", "--"), "aligned": ("tab:blue", "-")}
POST_STYLES = {"none": 1.0, "bn_reset": 0.65, "repair": 0.45}  # line opacity: a post-step's line is drawn lighter


def save(fig: Figure, stem: Path) -> list[Path]:
    FigureCanvasAgg(fig)
    paths = []
    for ext in ("png", "pdf"):
        path = stem.with_suffix(f".{ext}")
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=ext, dpi=150, bbox_inches="tight")
        paths.append(path)
    return paths


def barrier_figure(curves: pd.DataFrame, title: str) -> Figure:
    """Loss and test/train error along each line; curves has columns line, t, split, metric, value."""
    fig = Figure(figsize=(10, 7))
    axes = fig.subplots(2, 2, sharex=True)
    for col, split in enumerate(("train", "test")):
        for row, metric, label in ((0, "loss", "cross-entropy loss"), (1, "error", "error (%)")):
            ax = axes[row, col]
            for (line, post), df in curves[(curves.split == split) & (curves.metric == metric)].groupby(["line", "post"], sort=False):
                kind = "aligned" if line.startswith("aligned") else "naive"
                color, style = LINE_STYLES[kind]
                if not line.endswith("1-2"):
                    color = None  # lines to the fused model (K > 2) each get their own colour
                name = line if post == "none" else f"{line} +{post}"
                ax.plot(df.t, df.value, style, color=color, label=name, lw=1.6, alpha=POST_STYLES.get(post, 0.5))
                ax.plot(df.t.iloc[[0, -1]], df.value.iloc[[0, -1]], "o", color=ax.lines[-1].get_color(), ms=6)
            ax.set_title(f"{split} {label}")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
            if row == 1:
                ax.set_xlabel("t  (0: model 1, 1: other end point)")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(title)
    return fig


def plane_figure(values: np.ndarray, xs: np.ndarray, ys: np.ndarray, markers: dict[str, tuple[float, float]], label: str, title: str) -> Figure:
    """Filled contours of `values` (rows: ys, cols: xs) on log-spaced levels, models marked."""
    fig = Figure(figsize=(7, 6))
    ax = fig.subplots()
    finite = values[np.isfinite(values)]  # a diverged point (inf/NaN) is left blank
    positive = finite[finite > 0]
    vmin = float(positive.min()) if positive.size else 1e-3
    vmax = float(np.quantile(finite, 0.9)) if finite.size else vmin
    vmax = max(vmax, vmin * 10)
    levels = np.geomspace(vmin, vmax, 16)
    clipped = np.ma.masked_invalid(np.clip(values, vmin, vmax))
    cs = ax.contourf(xs, ys, clipped, levels=levels, norm=LogNorm(vmin, vmax), cmap="viridis", extend="max")
    ax.contour(xs, ys, clipped, levels=levels[::3], colors="k", linewidths=0.4, alpha=0.5)
    cbar = fig.colorbar(cs, ax=ax, ticks=levels[::3])
    cbar.ax.yaxis.set_major_formatter(FormatStrFormatter("%.3g"))
    cbar.ax.yaxis.set_minor_formatter(NullFormatter())
    cbar.set_label(f"{label} (log scale, clipped at {vmax:.3g})")
    m1, m2, p2 = markers["model 1"], markers["model 2"], markers["permuted model 2"]
    ax.plot([m1[0], m2[0]], [m1[1], m2[1]], "w--", lw=1.2)
    ax.plot([m1[0], p2[0]], [m1[1], p2[1]], "w--", lw=1.2)
    style = {"model 1": "o", "model 2": "o", "permuted model 2": "D", "fused model (projected)": "s"}
    colors = {"model 1": "white", "model 2": "lightgray", "permuted model 2": "tab:orange", "fused model (projected)": "tab:red"}
    tags = {"model 1": "1", "model 2": "2", "permuted model 2": "π(2)", "fused model (projected)": "fused"}
    for name, (x, y) in markers.items():
        ax.plot([x], [y], style.get(name, "^"), color=colors.get(name, "tab:pink"), mec="k", ms=9, label=name, ls="none")
        ax.annotate(tags.get(name, name), (x, y), xytext=(6, 6), textcoords="offset points", color="white", fontsize=9, weight="bold")
    ax.set_xlabel("distance along model 1 → model 2 (L2 in weight space)")
    ax.set_ylabel("distance towards permuted model 2, orthogonal (L2)")
    ax.set_aspect("equal")
    ax.legend(loc="upper left", fontsize=8, framealpha=0.8)
    ax.set_title(title, fontsize=10)
    return fig


def fusion_figure(table: pd.DataFrame, title: str) -> Figure:
    """Test accuracy of every fused model (a column per method: one-shot and after each post-step or
    fine-tuning, side by side), the base models and the ensemble as lines; table: fusion.csv's rows.
    Points rather than bars, so the axis can zoom to where the models differ."""
    test = table[table.split == "test"]
    fused = test[test.role == "fused"]
    variants = list(dict.fromkeys(zip(fused["post"], fused["stage"])))
    methods = list(dict.fromkeys(fused["method"]))
    fig = Figure(figsize=(max(6.0, 1.1 * len(methods) + 3), 4.5))
    ax = fig.subplots()
    step = 0.6 / max(1, len(variants))
    markers = {"none": "o", "bn_reset": "s", "repair": "D"}
    for j, (post, stage) in enumerate(variants):
        rows = fused[(fused["post"] == post) & (fused["stage"] == stage)].set_index("method")
        xs = [i + (j - (len(variants) - 1) / 2) * step for i, m in enumerate(methods) if m in rows.index]
        ys = [100 * rows.loc[m, "accuracy"] for m in methods if m in rows.index]
        name = " ".join(([f"+{post}"] if post != "none" else []) + ([stage] if stage != "one-shot" else [])) or "one-shot"
        ax.plot(xs, ys, markers.get(post, "o") if stage == "one-shot" else "^", ls="none", ms=8, label=name,
                color="tab:green" if stage != "one-shot" else None)
        for x, y in zip(xs, ys):
            ax.annotate(f"{y:.1f}", (x, y), xytext=(0, 7), textcoords="offset points", ha="center", fontsize=7)
    settings = fused.drop_duplicates("method").set_index("method")["settings"]
    ax.set_xticks(range(len(methods)), [m if settings.get(m, "defaults") in ("defaults", "") else f"{m}\n{settings[m]}" for m in methods],
                  fontsize=8)
    ax.set_xlim(-0.6, len(methods) - 0.4)
    for stage, color in (("one-shot", "gray"), ("finetuned", "tab:green")):  # fine-tuned bases: what fine-tuned fusions compare to
        accs = 100 * test[(test.role == "base") & (test.stage == stage)]["accuracy"]
        name = "base models" + ("" if stage == "one-shot" else f", {stage}")
        for i, acc in enumerate(accs):
            ax.axhline(acc, color=color, ls="--", lw=1, label=f"{name} ({', '.join(f'{a:.1f}' for a in accs)})" if i == 0 else None)
    bases = 100 * test[test.role == "base"]["accuracy"]
    for acc in 100 * test[test.role == "ensemble"]["accuracy"]:
        ax.axhline(acc, color="black", ls=":", lw=1.2, label=f"prediction ensemble ({acc:.1f})")
    shown = [*(100 * fused["accuracy"]), *bases]
    ax.set_ylim(max(0.0, min(shown) - 4), min(100.0, max(shown) + 3))
    ax.set_ylabel("test accuracy (%)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title(title, fontsize=10)
    return fig
