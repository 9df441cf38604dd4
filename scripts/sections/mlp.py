"""(a)-(b) MLPs on mnist_small: one-shot fusion for K = 2, 4, 6 and other widths, and barriers."""

from __future__ import annotations

import pandas as pd

from sections.common import PAPER
from sections.tables import accuracy_table, barrier_table, md_table


def section(run, quick: bool) -> str:
    widths = "[48,24]" if quick else "[400,200,100]"
    base = ["dataset=mnist_small", "model=mlp", f"model.widths={widths}", f"train.epochs={2 if quick else 20}"]
    seeds = [0, 1, 2, 3] if quick else [0, 1, 2, 3, 4, 5]
    pairs = [seeds[i : i + 2] for i in range(0, len(seeds), 2)]
    run("train", *base, f"seeds={seeds}")
    peers = "baselines=[avg,ot,wm,c2m3,am,zipit]"
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
        "(exact OT, layer-wise pass plus whole-network sweeps, cost=auto: weights and activations mixed unless activations alone score better on the validation split beyond its noise); `wb (paper)` is the "
        "paper's layer-wise algorithm (`solver.sweeps=0 solver.cost=weight`); `ot` is Singh & Jaggi; `wm`/`am` are Git "
        "Re-Basin's weight (MergeMany for K > 2) and activation matching; `c2m3` is C²M³'s Frank–Wolfe through a universe "
        "(fusion/c2m3.py); `zipit` is ZipIt!'s greedy merges within and across models (fusion/zipit.py); `ensemble` averages "
        "the base models' predicted "
        "probabilities (not a single network).",
        md_table(accuracy_table(fusion, settings)),
        "## (b) Linear mode connectivity, MLP",
        "Barriers along the naive line θ₁ → θ₂ and the aligned line θ₁ → π(θ₂) for each method's couplings, with and "
        "without REPAIR applied at every point (Entezari et al. barrier; loss in nats on the training split, error in "
        "percentage points on the test set; mean ± sd over seed pairs).",
        md_table(barrier_table(barriers)),
    ])
