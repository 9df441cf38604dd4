"""fusionctl fuse: fuse the base models (WB by default) and the baselines, evaluate every model."""

import hydra

from fusionctl.commands.common import (
    config_dir,
    guarded,
    output_dir,
    set_threads,
    to_dataclass,
)


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="fuse")
@guarded
def main(cfg) -> None:
    from fusionctl.config import FuseCommandConfig
    from fusionctl.jobs.fuse import run_fuse, summary

    conf = to_dataclass(cfg, FuseCommandConfig)
    set_threads(conf.threads)
    out = output_dir()
    table = run_fuse(conf, out)
    print(f"accuracy (%) on {conf.dataset.name}, solver={conf.solver.name}; table: {out / 'fusion.csv'}, figure: {out / 'fusion.png'}")
    print(summary(table))
