"""fusionctl train: train one base model per seed into the model store."""

import hydra

from fusionctl.commands.common import (
    config_dir,
    guarded,
    output_dir,
    set_threads,
    to_dataclass,
)


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
@guarded
def main(cfg) -> None:
    from fusionctl.config import TrainCommandConfig
    from fusionctl.jobs.train import run_train

    conf = to_dataclass(cfg, TrainCommandConfig)
    set_threads(conf.threads)
    table = run_train(conf, output_dir())
    print(table[["seed", "best_epoch", "best_val_acc", "folder"]].to_string(index=False))
