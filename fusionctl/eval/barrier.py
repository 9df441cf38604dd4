"""Loss barrier along a straight line between two models (Entezari et al. 2022; METHOD.md C.2)."""

from __future__ import annotations

import numpy as np


def barrier(ts: np.ndarray, values: np.ndarray) -> float:
    """max_t [ v(t) - ((1 - t) v(0) + t v(1)) ] for values sampled at ts (which include 0 and 1).

    Non-negative, because the end points contribute 0; a path below the chord reports 0.
    """
    ts = np.asarray(ts, dtype=float)
    values = np.asarray(values, dtype=float)
    if ts.ndim != 1 or ts.shape != values.shape or ts[0] != 0.0 or ts[-1] != 1.0:
        raise ValueError("ts must be increasing from 0 to 1 and match values")
    chord = (1.0 - ts) * values[0] + ts * values[-1]
    return float(np.max(values - chord))


def line_ts(points: int) -> np.ndarray:
    if points < 2:
        raise ValueError(f"a line needs at least 2 points, got {points}")
    return np.linspace(0.0, 1.0, points)
