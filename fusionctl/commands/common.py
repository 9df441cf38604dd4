"""What every Hydra app shares: the config folder, DictConfig -> dataclass, one-line errors."""

from __future__ import annotations

import functools
import logging
import os
import sys
from pathlib import Path

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fusionctl.errors import FusionctlError

log = logging.getLogger("fusionctl")
FAILED_JOBS: list[str] = []  # jobs of a sweep that failed in this process


def config_dir() -> str:
    """configs/ inside an installed wheel (fusionctl/configs) or at the top of a source checkout."""
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "configs", package.parent / "configs"):
        if (candidate / "train.yaml").is_file():
            return str(candidate)
    raise RuntimeError(f"fusionctl's configs/ folder was not found next to {package}; reinstall the package")


def register_schemas() -> None:
    """The dataclasses' defaults as configs the group YAMLs extend (`schema/solver/<method>`,
    `schema/<group>/defaults`): a YAML states only what differs, every key stays overridable,
    and values are type-checked here at the boundary (one line), not by Hydra."""
    from dataclasses import asdict

    from hydra.core.config_store import ConfigStore

    from fusionctl.config import SOLVERS, DatasetConfig, LandscapeConfig, OptimConfig

    store = ConfigStore.instance()
    for name, settings in SOLVERS.items():
        store.store(group="schema/solver", name=name, node=asdict(settings()))
    for group, schema in (("dataset", DatasetConfig), ("optim", OptimConfig), ("landscape", LandscapeConfig)):
        store.store(group=f"schema/{group}", name="defaults", node=asdict(schema()))


register_schemas()


def to_dataclass(cfg, schema):
    """Merge the composed YAML into the schema (type-checked) and return the dataclass; the
    solver node is merged into its own method's settings class and checked."""
    from fusionctl.config import SOLVERS, solver_settings

    try:
        conf = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), cfg))
        if isinstance(getattr(conf, "solver", None), dict):
            name = conf.solver.get("name", "wb")
            if name not in SOLVERS:
                raise FusionctlError(f"unknown solver '{name}'; choose from: {', '.join(SOLVERS)}")
            node = OmegaConf.merge(OmegaConf.structured(SOLVERS[name]), OmegaConf.create({"solver": conf.solver})["solver"])
            conf.solver = solver_settings(name, OmegaConf.to_container(node))
        if getattr(conf, "threads", 0) < 0:
            raise FusionctlError(f"threads must be >= 0 (0 leaves torch's default), got {conf.threads}")
        return conf
    except OmegaConfBaseException as exc:
        msg = str(exc).strip().splitlines()[0]
        key = getattr(exc, "full_key", None)
        raise FusionctlError(f"bad config value{f' for {key}' if key else ''}: {msg}") from exc


def output_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def guarded(task):
    """User errors end the job with one line on stderr and exit 1 (FUSIONCTL_DEBUG=1 shows the traceback)."""

    @functools.wraps(task)
    def wrapper(cfg):
        try:
            return task(cfg)
        except (FusionctlError, OSError) as exc:
            if os.environ.get("FUSIONCTL_DEBUG"):
                raise
            message = str(exc) if isinstance(exc, FusionctlError) else f"cannot write {exc.filename}: {exc.strerror}; choose another store_dir or output folder"
            log.error("%s", message)
            if _in_sweep():
                # one failing job must not stop the sweep: record it where the report finds it
                (output_dir() / "error.txt").write_text(message + "\n")
                FAILED_JOBS.append(message)
                return None
            print(f"fusionctl: error: {message}", file=sys.stderr)
            sys.exit(1)

    return wrapper


def _in_sweep() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def set_threads(n: int) -> None:
    """threads=0 leaves torch's default, except under a launcher that runs jobs side by side
    (joblib): one thread per job, so parallel jobs do not oversubscribe the cores."""
    if n == 0 and _launcher().endswith("JoblibLauncher"):
        n = 1
    if n > 0:
        import torch

        torch.set_num_threads(n)


def _launcher() -> str:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return ""
    return str(HydraConfig.get().launcher.get("_target_", ""))
