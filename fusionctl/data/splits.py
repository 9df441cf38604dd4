"""In-memory tensor splits: every dataset here fits in memory, and tensor batching is far
faster on a CPU than a DataLoader."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Split:
    x: torch.Tensor  # float32 (N, *input_shape), normalised; int64 token ids for text
    y: torch.Tensor  # int64 (N,)

    def __len__(self) -> int:
        return len(self.y)

    def head(self, n: int) -> "Split":
        return self if n <= 0 or n >= len(self) else Split(self.x[:n], self.y[:n])

    def tail(self, n: int) -> "Split":
        return self if n <= 0 or n >= len(self) else Split(self.x[-n:], self.y[-n:])


@dataclass
class Splits:
    name: str
    train: Split
    val: Split
    test: Split
    input_shape: tuple[int, ...]
    num_classes: int
    augment: bool = False  # random crop (padding 4) and horizontal flip of training batches
    vocab: int = 0  # text: x holds token ids in [0, vocab) of shape (N, steps); 0 for dense inputs


def augment_batch(x: torch.Tensor, gen: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Standard CIFAR augmentation on a (B, C, H, W) batch: random crop after zero-padding, random flip."""
    b, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    rows = (dy[:, None] + torch.arange(h)[None])[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w)[None])[:, None, None, :]
    out = padded[torch.arange(b)[:, None, None, None], torch.arange(x.shape[1])[None, :, None, None], rows, cols]
    flip = torch.rand(b, generator=gen) < 0.5
    out[flip] = out[flip].flip(3)
    return out


def make_splits(name, x_train, y_train, x_test, y_test, num_classes, val_fraction, split_seed) -> Splits:
    """Hold out `val_fraction` of train for validation with a fixed permutation."""
    perm = np.random.default_rng(split_seed).permutation(len(y_train))
    n_val = int(round(val_fraction * len(y_train)))
    val_idx, tr_idx = perm[:n_val], perm[n_val:]
    to = lambda x, y, idx: Split(x[idx].contiguous(), y[idx].contiguous())  # noqa: E731
    all_idx = np.arange(len(y_test))
    return Splits(
        name=name,
        train=to(x_train, y_train, torch.from_numpy(tr_idx)),
        val=to(x_train, y_train, torch.from_numpy(val_idx)),
        test=to(x_test, y_test, torch.from_numpy(all_idx)),
        input_shape=tuple(x_train.shape[1:]),
        num_classes=num_classes,
    )


def normalise(images: np.ndarray, mean, std) -> torch.Tensor:
    """uint8 (N, H, W) or (N, C, H, W) -> float32 (N, C, H, W) standardised per channel."""
    x = torch.from_numpy(np.array(images, dtype=np.uint8)).float().div_(255.0)
    if x.dim() == 3:
        x = x.unsqueeze(1)
    mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (x - mean) / std
