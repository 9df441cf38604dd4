"""`fusionctl <command> [hydra overrides]`: picks the command, hands the rest to its Hydra app."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

COMMANDS = {
    "train": "train base models, one per seed, into the hashed model store",
    "fuse": "fuse base models (Wasserstein barycenter, OT, averaging) and evaluate every model",
    "landscape": "loss-barrier curves and the 2-D loss landscape through model 1, model 2 and permuted model 2",
    "report": "summarise a sweep folder (fusionctl report outputs/multirun/fuse/<time>): summary.csv and plots",
}
GROUPS = ("dataset", "model", "solver", "optim", "landscape", "experiment")
FUSION_KEYS = ("solver", "baselines", "weights", "target", "models", "post", "finetune")
NOT_READ = {"train": (*FUSION_KEYS, "landscape"), "fuse": ("landscape",), "landscape": ()}  # keys a command's config leaves out


def usage() -> str:
    lines = ["usage: fusionctl <command> [key=value ...] [-m] [--help] [--cfg job]", "", "commands:"]
    lines += [f"  {name:<10} {text}" for name, text in COMMANDS.items()]
    lines += ["", "Each command is a Hydra app: `fusionctl <command> --help` lists its options."]
    return "\n".join(lines)


def check_group_choices(args: list[str]) -> str | None:
    """One line for `group=choice` overrides naming a config that does not exist (Hydra's own message is long)."""
    from fusionctl.commands.common import config_dir

    root = Path(config_dir())
    for arg in args:
        if arg.startswith("-") or "=" not in arg:
            continue
        key, value = arg.lstrip("+~").split("=", 1)
        if key not in GROUPS or value.startswith(("[", "glob(", "range(", "choice(")) or value in ("null", ""):
            continue
        available = sorted(p.stem for p in (root / key).glob("*.yaml"))
        for choice in value.split(","):
            if choice not in available:
                return f"fusionctl: error: unknown {key} '{choice}'; choose from: {', '.join(available)}"
    return None


def check_keys_read(command: str, args: list[str]) -> str | None:
    """One line for a key the command does not read (Hydra's own message is six lines)."""
    for arg in args:
        if "=" in arg and not arg.startswith("-"):
            key = arg.lstrip("+~").split("=", 1)[0].split(".", 1)[0]
            if key in NOT_READ.get(command, ()):
                readers = [c for c, keys in NOT_READ.items() if key not in keys]
                return f"fusionctl: error: `fusionctl {command}` does not read {key}; pass it to {' or '.join(readers)}"
    return None


def chosen_options(args: list[str], group: str, default: str) -> list[str]:
    """The option(s) of `group` the command line picks: `group=a[,b]`, else the one an
    +experiment preset overrides, else the default."""
    from fusionctl.commands.common import config_dir

    names = [a.split("=", 1)[1] for a in args if a.lstrip("+~").startswith(f"{group}=")]
    for arg in args:
        if arg.startswith("+experiment=") and not names:
            preset = Path(config_dir()) / "experiment" / f"{arg.split('=', 1)[1]}.yaml"
            lines = preset.read_text().splitlines() if preset.is_file() else []
            names += [line.split(":", 1)[1].strip() for line in lines if line.strip().startswith(f"- override /{group}:")][:1]
    return names[-1].split(",") if names else [default]


def check_solver_keys(args: list[str]) -> str | None:
    """One line for `solver.<key>=...` naming a setting the chosen method does not have (each
    method reads only its own settings; Hydra's own message is six lines)."""
    from fusionctl.config import SOLVERS, unknown_setting

    chosen = [n for n in chosen_options(args, "solver", "wb") if n in SOLVERS]
    for arg in args:
        key = arg.split("=", 1)[0]
        if key.startswith("solver.") and "=" in arg:
            for name in chosen:
                problem = unknown_setting(name, key.split(".", 1)[1])
                if problem:
                    return f"fusionctl: error: {problem} (each method reads only its own; see configs/solver/{name}.yaml)"
    return None


def check_model_keys(args: list[str]) -> str | None:
    """One line for `model.<key>=...` naming a key the chosen model's config does not have
    (e.g. model.widths with model=custom; Hydra's own message is six lines)."""
    from omegaconf import OmegaConf

    from fusionctl.commands.common import config_dir

    root = Path(config_dir()) / "model"
    for name in chosen_options(args, "model", "mlp"):
        if not (root / f"{name}.yaml").is_file():
            continue  # reported by check_group_choices
        known = list(OmegaConf.load(root / f"{name}.yaml").keys())
        for arg in args:
            key = arg.split("=", 1)[0]
            if key.startswith("model.") and "=" in arg and key.split(".")[1] not in known:
                return (f"fusionctl: error: model={name} has no setting '{key.split('.')[1]}'; its settings are: "
                        f"{', '.join(k for k in known if k != 'name')} (see configs/model/{name}.yaml)")
    return None


def check_setting_names(command: str, args: list[str]) -> str | None:
    """One line for `a.b=...` naming a setting the commands' schema (config.RunConfig) does not have,
    e.g. optim.lrr or seedz (Hydra's own message is six lines); solver.* and model.* are checked
    against the chosen method and model above, and `+key=...` adds a key on purpose."""
    import dataclasses
    import typing

    from fusionctl.config import RunConfig

    for arg in args:
        if "=" not in arg or arg.startswith(("-", "+", "~")):
            continue
        key = arg.split("=", 1)[0]
        path = key.split(".")
        if "/" in key or path[0] in ("hydra", "solver", "model", "experiment"):  # hydra/launcher=...: Hydra's own groups
            continue
        schema: typing.Any = RunConfig
        for depth, name in enumerate(path):
            if not dataclasses.is_dataclass(schema):
                break  # a dict or list: its keys are free
            known = typing.get_type_hints(schema)
            if name not in known:
                where = ".".join(path[:depth])
                listed = ", ".join(f.name for f in dataclasses.fields(schema) if depth or f.name not in NOT_READ.get(command, ()))
                return (f"fusionctl: error: no setting '{'.'.join(path[:depth + 1])}'; "
                        f"{f'{where} has' if where else 'the settings are'}: {listed}")
            schema = known[name]
    return None


def check_output_dirs(args: list[str]) -> str | None:
    """One line for an output folder that cannot be created (Hydra would print a traceback).

    Creating it is the only reliable test (root passes every permission check); Hydra would
    create it a moment later anyway.
    """
    wanted = [a.split("=", 1)[1] for a in args if a.startswith(("hydra.run.dir=", "hydra.sweep.dir="))] or ["outputs"]
    for path in map(Path, wanted):
        if "${" in str(path):
            continue  # interpolated by Hydra; checked when it is created
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            return f"fusionctl: error: cannot create the output folder {path} ({exc.strerror}); choose another with hydra.run.dir=..."
    return None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from fusionctl import __version__

        print(f"fusionctl {__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"fusionctl: error: unknown command '{command}'; choose from: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    if command == "report":
        from fusionctl.commands.report import main as report

        return report(rest)
    problem = check_keys_read(command, rest) or check_group_choices(rest) or check_solver_keys(rest) or check_model_keys(rest) or check_setting_names(command, rest)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    problem = check_output_dirs(rest)
    if problem:
        print(problem, file=sys.stderr)
        return 1
    module = importlib.import_module(f"fusionctl.commands.{command}")
    sys.argv = [f"fusionctl {command}", *rest]
    from fusionctl.commands import common

    common.FAILED_JOBS.clear()
    module.main()
    if common.FAILED_JOBS:
        print(f"fusionctl: error: {len(common.FAILED_JOBS)} job(s) of the sweep failed (error.txt in their folders); "
              f"the others finished; `fusionctl report <sweep folder>` lists them", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
