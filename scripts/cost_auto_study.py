"""How well cost=auto's rules pick between its two candidates: score both on the validation split, on
training inputs the probe and REPAIR did not read, and on the test set, then replay each rule.

    # one fusion (any `fusionctl fuse` overrides; the candidates' scores go to OUT/TAG.pt):
    .venv/bin/python scripts/cost_auto_study.py run OUT TAG dataset=mnist_small model=mlp "seeds=[0,1]" baselines=[]
    # every saved fusion: each rule's picks and the test points it lost to the better candidate:
    .venv/bin/python scripts/cost_auto_study.py rules OUT [--csv FILE]

`run` wraps `fusionctl fuse` and records, for each candidate cost=auto scores (cost=both first, then
cost=activation), per-example losses and hits after the family's post-step on: all of the validation
split, up to 10,000 training inputs after the first 512 (--tail; the default scores the last 5,000 of
them), and the test set. The fusion itself decides as the installed fusionctl does.
"""

from __future__ import annotations

import argparse
import csv
import sys
from dataclasses import replace
from pathlib import Path

import torch

import fusionctl.jobs.fuse as fuse_job
from fusionctl.data import Split
from fusionctl.fusion.engine import HeldOut


def run(out: Path, tag: str, overrides: list[str], tail: int) -> int:
    score_on = fuse_job.held_out_score
    seen: list[dict] = []

    def recording(model_cfg, splits, bases, spec, lambdas, device, references=None, variants=(), skip=512):
        rest = Split(splits.train.x[512 : 512 + tail], splits.train.y[512 : 512 + tail])
        limit, fuse_job.SCORE_SAMPLES = fuse_job.SCORE_SAMPLES, 10**9
        # skipping every training input makes a scorer read its `val`: each split in turn, whole
        scorers = {name: score_on(model_cfg, replace(splits, val=split), bases, spec, lambdas, device, references, variants, 10**9)
                   for name, split in (("val", splits.val), ("train_tail", rest), ("test", splits.test))}
        fuse_job.SCORE_SAMPLES = limit
        chosen = score_on(model_cfg, splits, bases, spec, lambdas, device, references, variants, skip)

        def score(result):
            seen.append({name: (s.losses, s.hits) for name, s in ((n, f(result)) for n, f in scorers.items())})
            torch.save(seen, out / f"{tag}.pt")
            return chosen(result)

        return score

    out.mkdir(parents=True, exist_ok=True)
    fuse_job.held_out_score = recording
    from fusionctl.cli import main

    return main(["fuse", *overrides])


def pooled(*parts: tuple) -> HeldOut:
    return HeldOut(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))


def first(scores: tuple, n: int) -> HeldOut:
    return HeldOut(scores[0][:n], scores[1][:n])


def noise_guarded(a: HeldOut, b: HeldOut) -> bool:
    """The rule of 2026-12-08 morning: as accurate, and a mean loss lower by > 2 standard errors."""
    d = (a.losses - b.losses).double()
    return a.accuracy >= b.accuracy and float(d.mean()) < -2 * float(d.std()) / d.numel() ** 0.5


RULES = {  # (cost=both's scores, cost=activation's) -> True to keep cost=activation
    "validation accuracy (first 2,000; until 2026-12-08)": lambda b, a: first(a["val"], 2000).accuracy > first(b["val"], 2000).accuracy,
    "validation, noise-guarded loss (first 2,000; 2026-12-08)": lambda b, a: noise_guarded(first(a["val"], 2000), first(b["val"], 2000)),
    "validation accuracy, all of it": lambda b, a: HeldOut(*a["val"]).accuracy > HeldOut(*b["val"]).accuracy,
    "training-input accuracy (the default)": lambda b, a: HeldOut(*a["train_tail"]).accuracy > HeldOut(*b["train_tail"]).accuracy,
    "training-input accuracy, first 1,000": lambda b, a: first(a["train_tail"], 1000).accuracy > first(b["train_tail"], 1000).accuracy,
    "validation + training-input accuracy": lambda b, a: pooled(a["val"], a["train_tail"]).accuracy > pooled(b["val"], b["train_tail"]).accuracy,
    "training-input loss": lambda b, a: HeldOut(*a["train_tail"]).loss < HeldOut(*b["train_tail"]).loss,
}


def rules(out: Path, csv_path: Path | None) -> None:
    rows, lost = [], {r: [0.0, 0] for r in RULES}
    for f in sorted(out.glob("*.pt")):
        seen = torch.load(f)
        if len(seen) < 2:  # the candidates coincided: nothing to choose
            continue
        both, act = seen[0], seen[1]
        tb, ta = (100 * HeldOut(*s["test"]).accuracy for s in (both, act))
        picks = {r: bool(rule(both, act)) for r, rule in RULES.items()}
        for r, p in picks.items():
            lost[r][0] += max(tb, ta) - (ta if p else tb)
            lost[r][1] += (ta if p else tb) < max(tb, ta)
        rows.append({"fusion": f.stem, "test_both": round(tb, 2), "test_activation": round(ta, 2),
                     "scoring_inputs": len(both["train_tail"][1]), "validation": len(both["val"][1]),
                     **{r: "activation" if p else "both" for r, p in picks.items()}})
    print(f"{len(rows)} fusions whose candidates differ; per rule, test points lost to the better candidate (wrong picks):")
    for r, (points, wrong) in lost.items():
        print(f"  {r:58s} {points:6.2f}  ({wrong} wrong)")
    if csv_path:
        with open(csv_path, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    r = sub.add_parser("run")
    r.add_argument("out", type=Path)
    r.add_argument("tag")
    r.add_argument("--tail", type=int, default=10000)
    r.add_argument("overrides", nargs="*")
    s = sub.add_parser("rules")
    s.add_argument("out", type=Path)
    s.add_argument("--csv", type=Path)
    args = ap.parse_args()
    if args.what == "run":
        return run(args.out, args.tag, args.overrides, args.tail)
    rules(args.out, args.csv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
