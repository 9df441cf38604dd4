"""Unit activations as alignment features: z-scored, streamed, with exact geometry.

Correlation matching (REPAIR, ZipIt) compares units by the Pearson correlation of their
pre-activations. With z_a the centred, unit-norm activation vector of unit a,
|z_a - z_b|^2 = 2 - 2 corr(a, b), so squared-distance OT on z is correlation matching and
fits every barycenter solver unchanged. The vectors z are as long as the observations
(samples x positions: millions for a conv layer), so they are never stored: any F with
F F^T = corr gives the same distances, and corr of all models' units together is
accumulated batch by batch. Memory is O(N x min(N_obs, N)) for N units in all models.
"""

from __future__ import annotations

import torch


class CorrelationFeatures:
    """Streams the activations of several models' units of one group; `features()` factors
    their joint correlation into one (n_i, d) feature block per model with unit-norm rows."""

    def __init__(self, sizes: list[int]):
        self.sizes = list(sizes)
        self.total = sum(self.sizes)
        self.blocks: list[torch.Tensor] | None = []  # raw observations while they are fewer than the units
        self.gram = self.sums = None
        self.count = 0

    def add(self, acts: list[torch.Tensor]) -> None:
        """acts: per model (n_i, observations), the same inputs for every model."""
        a = torch.cat([x.to(torch.float64) for x in acts])
        self.count += a.shape[1]
        if self.blocks is not None:
            self.blocks.append(a)
            if self.count <= self.total:
                return
            a, self.blocks = torch.cat(self.blocks, 1), None
            self.gram, self.sums = torch.zeros(self.total, self.total, dtype=a.dtype, device=a.device), torch.zeros(self.total, dtype=a.dtype, device=a.device)
        self.gram += a @ a.T
        self.sums += a.sum(1)

    def features(self) -> list[torch.Tensor]:
        if self.count == 0:
            raise ValueError("no activations were added")
        if self.blocks is not None:  # in place: one copy of the observations, not three
            z = torch.cat(self.blocks, 1)
            z -= z.mean(1, keepdim=True)
            z /= z.norm(dim=1, keepdim=True).clamp_min(1e-12)
        else:
            mean = self.sums / self.count
            cov = self.gram / self.count - mean[:, None] * mean[None, :]
            sd = cov.diagonal().clamp_min(0).sqrt()
            live = sd > 1e-12 * sd.max().clamp_min(1e-300)
            inv = torch.where(live, 1.0 / sd.clamp_min(1e-300), torch.zeros_like(sd))
            corr = cov * inv[:, None] * inv[None, :]
            vals, vecs = torch.linalg.eigh(corr)
            z = vecs * vals.clamp_min(0).sqrt()[None, :]  # z z^T = corr; a constant unit gets a zero row
        return list(torch.split(z, self.sizes))
