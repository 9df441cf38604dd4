import pytest
import torch

import fusionctl.training as training
from fusionctl.config import ModelConfig, OptimConfig, TrainConfig
from fusionctl.data import Split, Splits
from fusionctl.errors import FusionctlError
from fusionctl.store import load_checkpoint


def toy_splits(n=240, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 4, 4, generator=g)
    y = (x.flatten(1)[:, :3].sum(1) > 0).long() + 2 * (x.flatten(1)[:, 3] > 0).long()
    part = lambda a, b: Split(x[a:b], y[a:b])  # noqa: E731
    return Splits("toy", part(0, 160), part(160, 200), part(200, 240), (1, 4, 4), 4)


MODEL = ModelConfig(name="mlp", widths=[12, 8], bias=True)
OPTIM = OptimConfig(lr=0.1, momentum=0.9)
TRAIN = TrainConfig(epochs=5, batch_size=16)


def test_training_learns_and_writes_best_and_final(tmp_path):
    summary = training.train_one(toy_splits(), MODEL, OPTIM, TRAIN, 0, tmp_path, torch.device("cpu"))
    assert summary["best_val_acc"] > 0.45  # 4 balanced-ish classes: chance is about 0.25
    assert (tmp_path / "best.pt").is_file() and (tmp_path / "final.pt").is_file()
    assert not (tmp_path / "resume.pt").exists()
    hist = (tmp_path / "history.csv").read_text().splitlines()
    assert len(hist) == 1 + TRAIN.epochs and hist[0].startswith("seed,epoch,lr,train_loss")


def test_rerun_does_no_work(tmp_path, monkeypatch):
    training.train_one(toy_splits(), MODEL, OPTIM, TRAIN, 0, tmp_path, torch.device("cpu"))
    monkeypatch.setattr(training, "_epoch", lambda *a, **k: pytest.fail("trained again"))
    training.train_one(toy_splits(), MODEL, OPTIM, TRAIN, 0, tmp_path, torch.device("cpu"))


@pytest.mark.parametrize("stop_after", [1, 3])
def test_interrupted_training_resumes_to_identical_weights(tmp_path, monkeypatch, stop_after):
    splits = toy_splits()
    training.train_one(splits, MODEL, OPTIM, TRAIN, 4, tmp_path / "full", torch.device("cpu"))
    real_epoch, calls = training._epoch, {"n": 0}

    def dying_epoch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > stop_after:
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(training, "_epoch", dying_epoch)
    with pytest.raises(KeyboardInterrupt):
        training.train_one(splits, MODEL, OPTIM, TRAIN, 4, tmp_path / "cut", torch.device("cpu"))
    assert (tmp_path / "cut" / "resume.pt").is_file() and not (tmp_path / "cut" / "final.pt").exists()
    monkeypatch.setattr(training, "_epoch", real_epoch)
    training.train_one(splits, MODEL, OPTIM, TRAIN, 4, tmp_path / "cut", torch.device("cpu"))
    for name in ("final.pt", "best.pt"):
        a = load_checkpoint(tmp_path / "full" / name)["state_dict"]
        b = load_checkpoint(tmp_path / "cut" / name)["state_dict"]
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_divergence_stops_with_epoch_and_hint(tmp_path):
    with pytest.raises(FusionctlError, match="diverged in epoch 1.*lower optim.lr"):
        training.train_one(toy_splits(), MODEL, OptimConfig(lr=1e30, momentum=0.9), TRAIN, 0, tmp_path, torch.device("cpu"))


def test_learning_rate_schedules():
    cfg = OptimConfig(lr=1.0, schedule="cosine", warmup_epochs=1)
    assert training.lr_at(0, 11, cfg) == pytest.approx(0.5)
    assert training.lr_at(1, 11, cfg) == pytest.approx(1.0)
    assert training.lr_at(6, 11, cfg) == pytest.approx(0.5)
    assert training.lr_at(3, 10, OptimConfig(lr=1.0, schedule="step", step_size=2, gamma=0.5)) == pytest.approx(0.5)


def test_mixed_precision_training_runs_and_learns(tmp_path):
    summary = training.train_one(toy_splits(), MODEL, OPTIM, TrainConfig(epochs=5, batch_size=16, amp=True), 0, tmp_path, torch.device("cpu"))
    assert summary["best_val_acc"] > 0.45


def test_device_auto_falls_back_to_cpu_without_accelerators():
    from fusionctl.device import resolve_device

    if not torch.cuda.is_available():
        assert resolve_device("auto").type in ("cpu", "mps")
    with pytest.raises(FusionctlError, match="unknown device"):
        resolve_device("tpu")


def test_fusion_ot_stays_on_the_cpu_unless_the_device_is_cuda():
    from fusionctl.device import ot_device

    assert ot_device(torch.device("cuda:1")) == "cuda:1"
    assert ot_device(torch.device("mps")) == "cpu"  # no float64 there
    assert ot_device(torch.device("cpu")) == "cpu"
