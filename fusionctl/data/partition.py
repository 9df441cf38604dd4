"""Heterogeneous (federated) partitions of a training split: which samples client k sees.

- hetero (METHOD.md D.2 row 4, Singh & Jaggi): client 0 gets every sample of one class plus a
  share (10 %) of the others; client 1 gets the remaining samples of the other classes.
- dirichlet: per class, client proportions are drawn from Dirichlet(alpha) (small alpha: very
  skewed clients), the federated-learning standard.
"""

from __future__ import annotations

import numpy as np

from fusionctl.errors import FusionctlError


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


def hetero(labels: np.ndarray, client: int, cfg, classes: int) -> np.ndarray:
    if client > 1:
        raise FusionctlError("dataset.split=hetero has 2 clients; give exactly two seeds")
    if not 0 <= cfg.hetero_class < classes:
        raise FusionctlError(f"dataset.hetero_class must be a class index in [0, {classes}), got {cfg.hetero_class}")
    if not 0 <= cfg.hetero_share <= 1:
        raise FusionctlError(f"dataset.hetero_share must be in [0, 1] (client 0's share of the other classes), got {cfg.hetero_share}")
    return hetero_indices(labels, client, cfg.hetero_class, cfg.hetero_share, cfg.split_seed)


def dirichlet(labels: np.ndarray, client: int, cfg, classes: int) -> np.ndarray:
    if client >= cfg.clients:
        raise FusionctlError(f"dataset.split=dirichlet has {cfg.clients} clients but seed number {client + 1} asks for one more; raise dataset.clients")
    if not cfg.dirichlet_alpha > 0:
        raise FusionctlError(f"dataset.dirichlet_alpha must be > 0, got {cfg.dirichlet_alpha}")
    return dirichlet_indices(labels, client, cfg.clients, cfg.dirichlet_alpha, cfg.split_seed)


# dataset.split -> (labels, client index, dataset config, number of classes) -> that client's sample indices
PARTITIONS = {"none": None, "hetero": hetero, "dirichlet": dirichlet}
