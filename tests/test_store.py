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


@pytest.mark.parametrize("cfg", [ModelConfig("mlp", [6, 5], True), ModelConfig("resnet20", [4, 6, 8], False, True), ModelConfig("lstm", [5], True)],
                         ids=["mlp", "resnet20-bn", "lstm"])
def test_models_built_from_states_hold_their_own_copies(cfg):
    """build_from_state copies one template per config: each model holds exactly its state, in storage
    of its own (training one changes neither the other nor the state it came from)."""
    from fusionctl.data import Split, Splits
    from fusionctl.models import build_from_state, build_model

    shape = (28, 28) if cfg.name == "lstm" else (1, 8, 8)
    one = Split(torch.zeros(1, *shape), torch.zeros(1, dtype=torch.long))
    splits = Splits("toy", one, one, one, shape, 3)
    states = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        states.append({k: v.detach().clone() for k, v in build_model(cfg, shape, 3).state_dict().items()})
    kept = [{k: v.clone() for k, v in s.items()} for s in states]
    models = [build_from_state(cfg, splits, s) for s in states]
    x = torch.randn(4, *shape)
    for model, state in zip(models, states):
        assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    before = models[1](x)
    with torch.no_grad():
        for p in models[0].parameters():
            p.add_(1.0)
    assert torch.equal(models[1](x), before) and not torch.equal(models[0](x), before)
    for state, copy in zip(states, kept):
        assert all(torch.equal(state[k], copy[k]) for k in state)
    again = build_from_state(cfg, splits, states[0])
    assert all(torch.equal(again.state_dict()[k], v) for k, v in states[0].items())


def test_plain_state_finds_the_weights_a_training_script_saved():
    from fusionctl.store import plain_state

    sd = {"a.weight": torch.ones(2, 2), "a.bias": torch.zeros(2)}

    def same(found):
        return found is not None and found.keys() == sd.keys() and all(torch.equal(found[k], sd[k]) for k in sd)

    assert same(plain_state(sd))
    assert same(plain_state({"epoch": 3, "model_state_dict": {"module." + k: v for k, v in sd.items()}, "optimizer": {"lr": 0.1}}))
    assert same(plain_state({"model": {"state_dict": {"module._orig_mod." + k: v for k, v in sd.items()}}}))
    mixed = {"module.a.weight": sd["a.weight"], "a.bias": sd["a.bias"]}  # a prefix on some keys only is a name, kept
    assert plain_state(mixed).keys() == mixed.keys()
    for nothing in ({"epoch": 3}, [sd], {"state_dict": {}}, {"state_dict": {"a": 1}}, torch.ones(2)):
        assert plain_state(nothing) is None


def test_a_torchvision_state_dict_is_read_inside_fusionctls_wrapper():
    """torch.save(resnet18.state_dict()) names its entries conv1.weight, ...; fusionctl's wrapper
    holds the net as `net`: the entries are found there, and a head for other classes is one line."""
    from pathlib import Path

    from fusionctl.data import Split, Splits
    from fusionctl.jobs.bases import plain_base
    from fusionctl.models import build_model

    cfg, shape = ModelConfig("torchvision", arch="resnet18"), (1, 28, 28)
    one = Split(torch.zeros(1, *shape), torch.zeros(1, dtype=torch.long))
    splits = Splits("toy", one, one, one, shape, 10)
    torch.manual_seed(0)
    expected = build_model(cfg, shape, 10).state_dict()
    saved = {k.removeprefix("net."): v for k, v in expected.items() if not k.endswith("num_batches_tracked")}  # as older torch saved
    base = plain_base("a", Path("a.pt"), saved, cfg, splits)
    assert base.state.keys() == expected.keys() and all(torch.equal(base.state[k], v) for k, v in expected.items())
    with pytest.raises(FusionctlError, match=r"a.pt: fc.weight has shape \(1000, 512\), but torchvision resnet18 on toy .* has \(10, 512\)"):
        plain_base("a", Path("a.pt"), {**saved, "fc.weight": torch.zeros(1000, 512)}, cfg, splits)
    with pytest.raises(FusionctlError, match="is a state dict, but not of torchvision resnet18: it lacks layer1.0.conv1.weight"):
        plain_base("a", Path("a.pt"), {k: v for k, v in saved.items() if not k.startswith("layer1.0.conv1")}, cfg, splits)


def test_files_given_as_models_are_told_apart_by_their_folders():
    """models=[run_a/best.pt, run_b/best.pt] are two rows of the fusion table, not one named best."""
    from pathlib import Path

    from fusionctl.jobs.bases import file_labels

    def labels(*paths):
        return file_labels([Path(p) for p in paths])

    assert labels("a.pt", "b.pt") == ["a", "b"]
    assert labels("runs/x/seed0/best.pt", "runs/x/seed1/best.pt") == ["seed0/best", "seed1/best"]
    assert labels("/abs/m/best.pt", "m/best.pt") == ["abs/m/best", "m/best"]
    assert labels("a/b.pt", "c/b.pt", "c/b.pt", "d.pt") == ["b#1", "b#2", "b#3", "d"]  # one file twice: positions


def test_target_kwargs_build_a_traced_model_at_other_widths_or_say_why_not():
    """target.kwargs: the constructor's arguments for the fused model; refused when more than the
    aligned widths change (the classes) or when the traced layout depends on a width."""
    from pathlib import Path

    from fusionctl.data import Split, Splits
    from fusionctl.jobs.bases import Base, traced_target
    from fusionctl.models import build_model, model_spec

    shape = (3, 8, 8)
    one = Split(torch.zeros(1, *shape), torch.zeros(1, dtype=torch.long))
    splits = Splits("toy", one, one, one, shape, 4)

    def base(target, width):
        cfg = ModelConfig("custom", target=f"tests.custom_nets.{target}", kwargs={"width": width})
        return Base("a", Path("a.pt"), cfg, build_model(cfg, shape, 4).state_dict()), model_spec(cfg, shape, 4)

    small, spec = base("SmallNet", 4)
    assert traced_target(small, {"width": 8}, splits, spec).kwargs == {"width": 8}
    with pytest.raises(FusionctlError, match=r"does not build tests.custom_nets.SmallNet at other widths: its head.2.weight has shape \(5, 32\)"):
        traced_target(small, {"num_classes": 5}, splits, spec)
    with pytest.raises(FusionctlError, match="unexpected keyword argument 'depth'; check target.kwargs"):
        traced_target(small, {"depth": 3}, splits, spec)
    cut, spec = base("CutAtWidth", 6)
    with pytest.raises(FusionctlError, match="the traced alignment differs from model 0's beyond their widths"):
        traced_target(cut, {"width": 8}, splits, spec)


def test_atomic_writes_get_the_mode_a_plain_write_gets(tmp_path):
    """mkstemp creates 0600 files; a result or checkpoint must be readable as any file the user
    writes is (umask), e.g. by their group on a shared cluster."""
    from fusionctl.store import write_text_atomic

    write_text_atomic("x", tmp_path / "atomic.md")
    (tmp_path / "plain.md").write_text("x")
    assert (tmp_path / "atomic.md").stat().st_mode & 0o777 == (tmp_path / "plain.md").stat().st_mode & 0o777
