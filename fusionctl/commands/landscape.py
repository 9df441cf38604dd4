"""fusionctl landscape: barrier curves and the 2-D loss landscape through model 1, model 2 and permuted model 2."""

import hydra

from fusionctl.commands.common import (
    config_dir,
    guarded,
    output_dir,
    set_threads,
    to_dataclass,
)


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="landscape")
@guarded
def main(cfg) -> None:
    from fusionctl.config import LandscapeCommandConfig
    from fusionctl.jobs.landscape import run_landscape

    conf = to_dataclass(cfg, LandscapeCommandConfig)
    set_threads(conf.threads)
    out = output_dir()
    table, info = run_landscape(conf, out)
    cols = ["line", "split", "loss_barrier", "error_barrier", "midpoint_accuracy"]
    print(f"barriers on {conf.dataset.name}, solver={conf.solver.name} (error in % points); folder: {out}")
    print(table[cols].round(4).to_string(index=False))
    if info:
        print(f"plane: {info['plane_points']} points x {info['plane_samples']} samples in {info['plane_seconds']:.1f}s")
