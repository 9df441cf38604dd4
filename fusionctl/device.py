"""device=auto|cpu|cuda|mps."""

from __future__ import annotations

import torch

from fusionctl.errors import FusionctlError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise FusionctlError("device=cuda but no CUDA device is visible; use device=auto or device=cpu")
    if name == "mps" and not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
        raise FusionctlError("device=mps but MPS is not available; use device=auto or device=cpu")
    if name not in ("cpu", "cuda", "mps") and not name.startswith("cuda:"):
        raise FusionctlError(f"unknown device '{name}'; choose from: auto, cpu, cuda, mps")
    return torch.device(name)


def ot_device(device: torch.device) -> str:
    """Where fusion's costs and couplings live: a CUDA device, else the CPU (MPS has no float64)."""
    return str(device) if device.type == "cuda" else "cpu"
