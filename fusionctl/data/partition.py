"""Heterogeneous (federated) partitions of a training split: which samples client k sees.

- hetero (METHOD.md D.2 row 4, Singh & Jaggi): client 0 gets every sample of one class plus a
  share (10 %) of the others; client 1 gets the remaining samples of the other classes.
- dirichlet: per class, client proportions are drawn from Dirichlet(alpha) (small alpha: very
  skewed clients), the federated-learning standard.
"""

from __future__ import annotations

import numpy as np

SPLITS = ("none", "hetero", "dirichlet")


def hetero_indices(labels: np.ndarray, client: int, special: int, share: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    others = np.flatnonzero(labels != special)
    rng.shuffle(others)
    cut = int(round(share * len(others)))
    if client == 0:
        return np.sort(np.concatenate([np.flatnonzero(labels == special), others[:cut]]))
    return np.sort(others[cut:])


def dirichlet_indices(labels: np.ndarray, client: int, clients: int, alpha: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mine = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        shares = rng.dirichlet(np.full(clients, alpha))
        bounds = np.round(np.cumsum(shares) * len(idx)).astype(int)
        start = 0 if client == 0 else bounds[client - 1]
        mine.append(idx[start : bounds[client]])
    return np.sort(np.concatenate(mine))
