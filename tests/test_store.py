import dataclasses

import pytest
import torch

from fusionctl.config import DatasetConfig, ModelConfig, OptimConfig, TrainConfig
from fusionctl.errors import FusionctlError
from fusionctl.store import load_checkpoint, make_checkpoint, model_dir, save_atomic


class NotAllowed:  # a pickled class: weights_only loading must refuse it
    pass


def test_model_dir_depends_on_training_config_but_not_checkpoint_choice(tmp_path):
    d, m, o = DatasetConfig(), ModelConfig(), OptimConfig()
    a = model_dir(tmp_path, d, m, o, TrainConfig(), 0)
    assert a == model_dir(tmp_path, d, m, o, TrainConfig(checkpoint="final"), 0)
    assert a != model_dir(tmp_path, d, m, o, TrainConfig(epochs=3), 0)
    assert a != model_dir(tmp_path, d, ModelConfig(widths=[5]), o, TrainConfig(), 0)
    assert a.parent == model_dir(tmp_path, d, m, o, TrainConfig(), 1).parent


def test_a_new_config_field_at_its_default_keeps_stored_models_found(tmp_path):
    d, m, o = DatasetConfig(), ModelConfig(), OptimConfig()
    grown = dataclasses.make_dataclass("GrownTrainConfig", [("new_knob", int, 0)], bases=(TrainConfig,))
    assert model_dir(tmp_path, d, m, o, grown(), 0) == model_dir(tmp_path, d, m, o, TrainConfig(), 0)
    assert model_dir(tmp_path, d, m, o, grown(new_knob=1), 0) != model_dir(tmp_path, d, m, o, TrainConfig(), 0)


def test_checkpoint_round_trip(tmp_path):
    ckpt = make_checkpoint({"w": torch.ones(2)}, ModelConfig(), "mnist_small", (1, 28, 28), 10, seed=3)
    save_atomic(ckpt, tmp_path / "m.pt")
    back = load_checkpoint(tmp_path / "m.pt")
    assert back["seed"] == 3 and torch.equal(back["state_dict"]["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"], "no temporary files left behind"


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"),
    (b"definitely not a checkpoint", "cannot be loaded safely"),
    ("truncated", "cannot be loaded safely"),
    ("pickled-class", "cannot be loaded safely"),
    ("foreign-dict", "not a fusionctl checkpoint"),
])
def test_bad_checkpoints_give_one_clear_line(tmp_path, content, message):
    path = tmp_path / "bad.pt"
    if content == "truncated":
        save_atomic(make_checkpoint({"w": torch.ones(1000)}, ModelConfig(), "x", (1,), 2), path)
        path.write_bytes(path.read_bytes()[:300])
    elif content == "pickled-class":
        torch.save({"format": "fusionctl.model/1", "obj": NotAllowed()}, path)
    elif content == "foreign-dict":
        torch.save({"state_dict": {}}, path)
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(FusionctlError, match=message) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
