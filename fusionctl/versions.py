"""Versions and provenance recorded with every result table."""

from __future__ import annotations

import subprocess
from functools import lru_cache
from pathlib import Path

import fusionctl


@lru_cache(maxsize=1)
def versions() -> dict[str, str]:
    import numpy
    import ot
    import torch

    return {
        "fusionctl_version": fusionctl.__version__,
        "torch_version": str(torch.__version__),
        "pot_version": str(ot.__version__),
        "numpy_version": str(numpy.__version__),
        "git_commit": _git_commit(),
    }


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=Path(fusionctl.__file__).parent, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"
