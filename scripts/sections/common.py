"""What the sections share: the repository root and the paper's WB overrides."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
PAPER = ("solver.sweeps=0", "solver.cost=weight")  # the paper's layer-wise WB
