"""Markdown tables of the reproduction: accuracy per method and setting, barriers per line."""

from __future__ import annotations

import pandas as pd


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
    post = barriers["post"].fillna("none") if "post" in barriers else pd.Series("none", index=barriers.index)
    barriers = barriers.assign(line=barriers["line"] + post.map(lambda p: "" if p == "none" else f" +{p}"))  # post-step as data since 0.2
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
