"""The 2-D plane through three models (Garipov et al. 2018; METHOD.md C.3)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Plane:
    origin: torch.Tensor  # w0 (D,)
    u: torch.Tensor  # unit vector towards w2
    v: torch.Tensor  # unit vector towards w1, orthogonal to u
    dx: float  # |w2 - w0|
    dy: float  # length of (w1 - w0) orthogonal to u

    def coords(self, w: torch.Tensor) -> tuple[float, float]:
        """Orthogonal projection of a point onto the plane, in plot units (distance along u, v)."""
        d = (w - self.origin).double()
        return float(d @ self.u.double()), float(d @ self.v.double())


def plane_basis(w0: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor) -> Plane:
    """Gram-Schmidt: u = (w2 - w0)/dx, v = (w1 - w0) - <w1 - w0, u> u, normalised."""
    d2 = (w2 - w0).double()
    dx = float(d2.norm())
    if dx == 0:
        raise ValueError("model 1 and model 2 are identical; the plane is undefined")
    u = d2 / dx
    d1 = (w1 - w0).double()
    v = d1 - (d1 @ u) * u
    dy = float(v.norm())
    if dy <= 1e-12 * max(dx, 1.0):
        raise ValueError("permuted model 2 lies on the line model 1 - model 2; the plane is undefined")
    return Plane(w0, u.float(), (v / dy).float(), dx, dy)


def grid_coords(grid: int, margin: float) -> np.ndarray:
    """alpha (= beta) values: linspace(-margin, 1 + margin, grid)."""
    if grid < 2:
        raise ValueError(f"landscape.grid must be >= 2, got {grid}")
    return np.linspace(-margin, 1.0 + margin, grid)
