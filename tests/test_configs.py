from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from fusionctl.commands.common import config_dir, to_dataclass
from fusionctl.config import (
    FuseCommandConfig,
    LandscapeCommandConfig,
    TrainCommandConfig,
)
from fusionctl.errors import FusionctlError

ROOT = Path(config_dir())
SCHEMAS = {"train": TrainCommandConfig, "fuse": FuseCommandConfig, "landscape": LandscapeCommandConfig}
PRIMARY = [name for name in SCHEMAS if (ROOT / f"{name}.yaml").is_file()]
GROUP_OPTIONS = [(group.name, opt.stem) for group in sorted(ROOT.iterdir()) if group.is_dir() and group.name not in ("hydra",) for opt in sorted(group.glob("*.yaml"))]


def composed(name, overrides=()):
    with initialize_config_dir(config_dir=str(ROOT), version_base="1.3"):
        return compose(config_name=name, overrides=list(overrides))


@pytest.mark.parametrize("name", PRIMARY)
def test_primary_config_composes_into_its_schema(name):
    conf = to_dataclass(composed(name), SCHEMAS[name])
    assert conf.dataset.name == "mnist_small" and conf.model.name == "mlp"


@pytest.mark.parametrize("group, option", [g for g in GROUP_OPTIONS if g[0] != "experiment"])
def test_every_group_option_composes(group, option):
    name = "landscape" if "landscape" in PRIMARY else "fuse"
    if group == "landscape" and name != "landscape":
        pytest.skip("landscape command not present")
    conf = to_dataclass(composed(name, [f"{group}={option}"]), SCHEMAS[name])
    assert getattr(conf, group).name if hasattr(getattr(conf, group), "name") else True


def test_issue_keys_are_overridable():
    cfg = composed("fuse", ["model.widths=[8,4]", "model.bias=true", "seeds=[3,4,5]", "optim=adam", "train.epochs=2",
                            "train.batch_size=16", "solver=wb", "solver.ot=sinkhorn", "solver.reg=0.01", "solver.init=distill",
                            "weights=[1,2,3]", "target.widths=[6,3]", "store_dir=/tmp/s", "data_dir=/tmp/d"])
    conf = to_dataclass(cfg, FuseCommandConfig)
    assert conf.model.widths == [8, 4] and conf.model.bias and conf.seeds == [3, 4, 5]
    assert conf.optim.name == "adam" and conf.train.epochs == 2 and conf.solver.ot == "sinkhorn"
    assert conf.weights == [1, 2, 3] and conf.target.widths == [6, 3]


def test_wrongly_typed_value_is_one_line():
    with pytest.raises(FusionctlError, match="train.epochs") as info:
        to_dataclass(composed("train", ["train.epochs=many"]), TrainCommandConfig)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (ROOT / "experiment").glob("*.yaml")))
def test_experiment_presets_compose(experiment):
    for name in PRIMARY:
        conf = to_dataclass(composed(name, [f"+experiment={experiment}"]), SCHEMAS[name])
        assert conf.dataset.name != "" and conf.seeds
        if experiment.endswith("_paper") and hasattr(conf, "solver"):  # the paper's algorithm, not fusionctl's default
            assert (conf.solver.name, conf.solver.sweeps, conf.solver.cost) in {("wb", 0, "weight"), ("gwb", 0, "weight")}, experiment


@pytest.mark.parametrize("group", ["solver", "dataset", "optim", "landscape"])
def test_group_yamls_state_only_what_differs_from_their_dataclass(group):
    import yaml
    from dataclasses import asdict

    from fusionctl.config import SOLVERS, DatasetConfig, LandscapeConfig, OptimConfig

    for path in sorted((ROOT / group).glob("*.yaml")):
        own = {k: v for k, v in yaml.safe_load(path.read_text()).items() if k not in ("defaults", "name")}
        schema = SOLVERS[path.stem] if group == "solver" else {"dataset": DatasetConfig, "optim": OptimConfig, "landscape": LandscapeConfig}[group]
        default = asdict(schema())
        same = [k for k, v in own.items() if default.get(k, object()) == v]
        assert not same, f"{path.name} restates defaults: {same}"
        conf = to_dataclass(composed("landscape", [f"{group}={path.stem}"]), LandscapeCommandConfig)
        node = getattr(conf, group)
        assert all(getattr(node, k) == v for k, v in own.items()), path.name


def test_each_command_config_holds_only_the_keys_it_reads():
    train, fuse, land = (set(composed(name).keys()) for name in ("train", "fuse", "landscape"))
    fusion = {"solver", "baselines", "weights", "target", "models", "post", "finetune"}
    assert not (train & (fusion | {"landscape"})), train
    assert fusion <= fuse and "landscape" not in fuse
    assert fusion | {"landscape"} <= land
