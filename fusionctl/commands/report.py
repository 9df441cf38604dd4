"""`fusionctl report <sweep folder>`: one summary table (and plots) for all jobs of a sweep.

Jobs are the folders below the sweep that hold a fusion.csv, barriers.csv or error.txt. A
job's configuration is its Hydra overrides without `seeds=...`, so jobs that differ only in
their seeds are aggregated: mean, standard deviation and count.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from fusionctl.errors import FusionctlError
from fusionctl.store import write_csv_atomic, write_text_atomic


def job_overrides(job: Path) -> list[str]:
    path = job / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return []
    import yaml

    return [str(o) for o in (yaml.safe_load(path.read_text()) or [])]


def collect(sweep: Path) -> tuple[pd.DataFrame, pd.DataFrame, list[tuple[str, str]]]:
    fusion, barriers, failures = [], [], []
    for job in sorted({p.parent for pattern in ("fusion.csv", "barriers.csv", "error.txt") for p in sweep.rglob(pattern)}):
        overrides = job_overrides(job)
        config = " ".join(o for o in overrides if not o.startswith("seeds=")) or "(defaults)"
        name = str(job.relative_to(sweep)) if job != sweep else "."
        if (job / "error.txt").is_file():
            failures.append((name, (job / "error.txt").read_text().strip()))
        for fname, bucket in (("fusion.csv", fusion), ("barriers.csv", barriers)):
            if (job / fname).is_file():
                bucket.append(pd.read_csv(job / fname).assign(job=name, config=config))
    return (pd.concat(fusion) if fusion else pd.DataFrame(), pd.concat(barriers) if barriers else pd.DataFrame(), failures)


def summarise(fusion: pd.DataFrame, barriers: pd.DataFrame) -> pd.DataFrame:
    parts = []
    if len(fusion):
        f = fusion[fusion["split"] == "test"].copy()
        post = f["post"] if "post" in f else "none"
        stage = f["stage"] if "stage" in f else "one-shot"
        f["model"] = f["method"] + pd.Series(post, index=f.index).map(lambda p: "" if p == "none" else f" +{p}") \
            + pd.Series(stage, index=f.index).map(lambda s: "" if s == "one-shot" else f" ({s})")
        g = f.groupby(["config", "model"], sort=False)["accuracy"]
        parts.append(pd.DataFrame({"metric": "test accuracy (%)", "mean": g.mean() * 100, "std": g.std() * 100, "n": g.count()}).reset_index())
    if len(barriers):
        for col, label in (("loss_barrier", "loss barrier"), ("error_barrier", "error barrier (pts)")):
            b = barriers.assign(model=barriers["solver"] + ": " + barriers["line"] + " (" + barriers["split"] + ")")
            g = b.groupby(["config", "model"], sort=False)[col]
            parts.append(pd.DataFrame({"metric": label, "mean": g.mean(), "std": g.std(), "n": g.count()}).reset_index())
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["config", "model", "metric", "mean", "std", "n"])


def markdown(summary: pd.DataFrame) -> str:
    lines = ["| config | model | metric | mean | std | n |", "|---|---|---|---|---|---|"]
    for r in summary.itertuples():
        std = "" if pd.isna(r.std) else f"{r.std:.2f}"
        lines.append(f"| {r.config} | {r.model} | {r.metric} | {r.mean:.2f} | {std} | {r.n} |")
    return "\n".join(lines)


def plot(summary: pd.DataFrame, metric: str, path: Path) -> None:
    from matplotlib.figure import Figure

    from fusionctl.plots import save

    s = summary[summary["metric"] == metric]
    if not len(s):
        return
    fig = Figure(figsize=(max(6, 0.45 * len(s)), 4))
    ax = fig.subplots()
    labels = (s["model"] + "\n" + s["config"].str.slice(0, 40)).tolist()
    ax.bar(range(len(s)), s["mean"], yerr=s["std"].fillna(0), capsize=3, color="tab:blue", alpha=0.8)
    ax.set_xticks(range(len(s)), labels, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric}: mean ± std over seeds")
    ax.grid(axis="y", alpha=0.3)
    save(fig, path)


def run_report(sweep: Path) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    if not sweep.is_dir():
        raise FusionctlError(f"{sweep} is not a folder; give a sweep folder such as outputs/multirun/fuse/<time>")
    fusion, barriers, failures = collect(sweep)
    if not len(fusion) and not len(barriers) and not failures:
        raise FusionctlError(f"no fusion.csv or barriers.csv below {sweep}; is it a fusionctl sweep folder?")
    summary = summarise(fusion, barriers)
    write_csv_atomic(summary, sweep / "summary.csv")
    write_text_atomic(markdown(summary) + "\n", sweep / "summary.md")
    plot(summary, "test accuracy (%)", sweep / "summary_accuracy")
    plot(summary, "error barrier (pts)", sweep / "summary_barrier")
    return summary, failures


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="fusionctl report", description="summarise a sweep folder: summary.csv, summary.md, plots")
    ap.add_argument("sweep", type=Path)
    args = ap.parse_args(argv)
    try:
        summary, failures = run_report(args.sweep)
    except FusionctlError as exc:
        print(f"fusionctl: error: {exc}", file=sys.stderr)
        return 1
    print(markdown(summary))
    for job, message in failures:
        print(f"FAILED {job}: {message}")
    print(f"\nwrote {args.sweep / 'summary.csv'} ({len(summary)} rows); {len(failures)} failed job(s)")
    return 1 if failures else 0
