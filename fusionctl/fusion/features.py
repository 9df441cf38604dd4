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
        self.gram = self.sums = self.shift = None
        self.count = 0

    def add(self, acts: list[torch.Tensor]) -> None:
        """acts: per model (n_i, observations), the same inputs for every model.

        Products run in the activations' precision (float32 from a float32 model: half float64's
        time, about 3e-7 relative), on observations shifted by the first batch's means so that
        E[x x^T] - mu mu^T does not cancel; sums across batches accumulate in float64."""
        a = torch.cat([x if x.dtype in (torch.float32, torch.float64) else x.float() for x in acts])
        self.count += a.shape[1]
        self.dtype = a.dtype
        if self.blocks is not None:
            self.blocks.append(a)
            if self.count <= self.total:
                return
            a, self.blocks = torch.cat(self.blocks, 1), None
            self.shift = a.mean(1, keepdim=True)
            self.gram = torch.zeros(self.total, self.total, dtype=torch.float64, device=a.device)
            self.sums = torch.zeros(self.total, dtype=torch.float64, device=a.device)
        a = a - self.shift.to(a.dtype)
        self.gram += (a @ a.T).to(torch.float64)
        self.sums += a.sum(1, dtype=torch.float64)

    def features(self) -> list[torch.Tensor]:
        """A unit whose spread is below its activations' own precision (8 eps |mean|: a constant
        unit, up to round-off) gets a zero row."""
        if self.count == 0:
            raise ValueError("no activations were added")
        if self.blocks is not None:  # in place: one copy of the observations, not three
            z = torch.cat(self.blocks, 1)
            mean = z.mean(1, keepdim=True)
            z -= mean
            norm = z.norm(dim=1, keepdim=True)
            z /= norm.clamp_min(1e-12)
            z[(norm <= self._noise(mean.abs()) * z.shape[1] ** 0.5).squeeze(1)] = 0
        else:
            mean = self.sums / self.count  # of the shifted observations: the shift leaves the covariance as it is
            cov = self.gram / self.count - mean[:, None] * mean[None, :]
            sd = cov.diagonal().clamp_min(0).sqrt()
            live = (sd > 1e-12 * sd.max().clamp_min(1e-300)) & (sd > self._noise(self.shift.squeeze(1).abs().to(sd.dtype)))
            inv = torch.where(live, 1.0 / sd.clamp_min(1e-300), torch.zeros_like(sd))
            corr = cov * inv[:, None] * inv[None, :]
            vals, vecs = torch.linalg.eigh(corr)
            z = vecs * vals.clamp_min(0).sqrt()[None, :]  # z z^T = corr; a constant unit gets a zero row
        return list(torch.split(z, self.sizes))

    def _noise(self, magnitude: torch.Tensor) -> torch.Tensor:
        """The spread round-off alone gives values of this magnitude, in the activations' dtype."""
        return 8 * torch.finfo(self.dtype).eps * magnitude
