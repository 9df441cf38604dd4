"""Finding, loading and checking the base models a fusion or landscape job works on."""

from __future__ import annotations

import contextlib
import logging
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from fusionctl.config import FuseCommandConfig, ModelConfig, TargetConfig
from fusionctl.data import Splits
from fusionctl.errors import FusionctlError
from fusionctl.fusion.spec_check import verify_spec, verify_traced
from fusionctl.models import TRACED, adopt_spec, build_model, config_for, describe, example_input, group_sizes, model_spec
from fusionctl.store import load_checkpoint, model_dir

log = logging.getLogger(__name__)


@dataclass
class Base:
    label: str  # seed number, or for explicit models=[...] the file (file_labels)
    path: Path
    model_cfg: ModelConfig
    state: dict[str, torch.Tensor]


def base_paths(cfg: FuseCommandConfig) -> list[tuple[str, Path]]:
    given = cfg.models if cfg.models else cfg.seeds
    if given and len(given) < 2:
        what = f"models={list(cfg.models)}" if cfg.models else f"seeds={list(cfg.seeds)}"
        raise FusionctlError(f"fusion needs at least two base models, {what} gives one; give two or more, e.g. seeds=[0,1] or models=[a.pt,b.pt]")
    if cfg.models:
        paths = [Path(p) for p in cfg.models]
        return list(zip(file_labels(paths), paths))
    if not cfg.seeds:
        raise FusionctlError("seeds is empty; give at least two seeds, e.g. seeds=[0,1], or models=[a.pt,b.pt]")
    twice = sorted({s for s in cfg.seeds if list(cfg.seeds).count(s) > 1})
    if twice:
        raise FusionctlError(f"seeds={list(cfg.seeds)} names seed {', '.join(map(str, twice))} more than once; give distinct seeds "
                             "(to fuse a model with itself on purpose, models=[a.pt,a.pt])")
    if cfg.train.checkpoint not in ("best", "final"):
        raise FusionctlError(f"train.checkpoint must be best (highest validation accuracy) or final, got '{cfg.train.checkpoint}'")
    out = []
    for client, seed in enumerate(cfg.seeds):
        folder = model_dir(cfg.store_dir, cfg.dataset, cfg.model, cfg.optim, cfg.train, seed, client)
        path = folder / f"{cfg.train.checkpoint}.pt"
        if not path.is_file():
            raise FusionctlError(
                f"no trained model for seed {seed} at {path}; run `fusionctl train` with the same dataset/model/optim/train "
                f"settings and seeds first, or pass models=[...]"
            )
        out.append((str(seed), path))
    return out


def file_labels(paths: list[Path]) -> list[str]:
    """A label per file: its name without the suffix, with as many parent folders as it takes to
    tell the files apart (runs/a/best.pt and runs/b/best.pt: a/best, b/best); where no folders do
    (a file given twice), names shared by several get their position (best#1, best#2), so that no
    two base models share a row of the table."""
    parts = [p.with_suffix("").parts for p in paths]
    for depth in range(1, max(map(len, parts)) + 1):
        labels = ["/".join(q[-depth:]) for q in parts]
        if len(set(labels)) == len(labels):
            return labels
    stems = [p.stem for p in paths]
    return [f"{stem}#{i + 1}" if stems.count(stem) > 1 else stem for i, stem in enumerate(stems)]


def load_bases(cfg: FuseCommandConfig, splits: Splits) -> list[Base]:
    bases = []
    for label, path in base_paths(cfg):
        ckpt = load_checkpoint(path, plain=bool(cfg.models))
        if ckpt["format"] == "plain":
            bases.append(plain_base(label, path, ckpt["state_dict"], cfg.model, splits))
            continue
        if ckpt["dataset"] != splits.name:
            raise FusionctlError(f"{path} was trained on '{ckpt['dataset']}', not on dataset '{splits.name}'; set dataset={ckpt['dataset']}")
        if tuple(ckpt["input_shape"]) != splits.input_shape or ckpt["num_classes"] != splits.num_classes:
            raise FusionctlError(f"{path} expects inputs {tuple(ckpt['input_shape'])} and {ckpt['num_classes']} classes, the dataset has {splits.input_shape} and {splits.num_classes}")
        if ckpt.get("vocab", 0) != splits.vocab:
            raise FusionctlError(f"{path} was trained on a vocabulary of {ckpt.get('vocab', 0)} tokens, the dataset gives {splits.vocab}; use the dataset.vocab_size it was trained with")
        mc = ModelConfig(**ckpt["model"])
        bases.append(Base(label, path, mc, ckpt["state_dict"]))
    first = bases[0].model_cfg

    def architecture(mc: ModelConfig) -> tuple:  # a traced model's kwargs may set other widths (checked below)
        return (mc.name, mc.bias, mc.arch, mc.target) + (() if mc.name in TRACED else (mc.kwargs,))

    for b in bases[1:]:
        other = b.model_cfg
        if architecture(other) != architecture(first):
            def named(mc):
                return describe(mc) if mc.name in TRACED else f"{describe(mc)} (bias={mc.bias})"
            raise FusionctlError(f"{b.path} is a {named(other)} but {bases[0].path} is a {named(first)}; fuse models of one architecture")
        if len(other.widths) != len(first.widths):
            raise FusionctlError(f"{b.path} has {len(other.widths)} hidden layers but {bases[0].path} has {len(first.widths)}; fusion is layer-wise and needs equal depth")
    for b in bases:
        spec = spec_for(b.model_cfg, splits, cfg.spec_check)
        try:
            spec.check_covers(b.state)
            spec.group_sizes(b.state)
        except ValueError as exc:
            raise FusionctlError(f"{b.path}: weights do not match its declared architecture ({exc})") from exc
        if b.model_cfg.kwargs != first.kwargs:  # a traced model built with other arguments: model 0's at other widths only
            check_width_variant(b.model_cfg, b.state, bases[0], splits, spec_for(first, splits, cfg.spec_check), f"{b.path} (model.kwargs={b.model_cfg.kwargs})")
        if not all(torch.isfinite(v).all() for v in b.state.values() if v.is_floating_point()):
            raise FusionctlError(f"{b.path} contains NaN or Inf weights; retrain it")
    return bases


def plain_base(label: str, path: Path, state: dict[str, torch.Tensor], model_cfg: ModelConfig, splits: Splits) -> Base:
    """A state dict saved outside fusionctl, read as the configured model (model=...) on the
    configured dataset: its entries must be that model's and, once a built-in's widths are read
    from them, of its shapes."""

    def entries(cfg: ModelConfig) -> dict[str, torch.Tensor]:  # names and shapes; a built-in on the meta device
        with torch.random.fork_rng(devices=[]), contextlib.nullcontext() if cfg.name in TRACED else torch.device("meta"):
            return build_model(cfg, splits.input_shape, splits.num_classes, splits.vocab).state_dict()

    fix = "set model=... (model.arch, model.widths, model.bias, model.batch_norm) to the network it was saved from"
    names = entries(model_cfg)
    # the torchvision or timm net itself, as saved, inside fusionctl's wrapper (`net.`)
    wrapper = os.path.commonprefix(list(names)).rpartition(".")[0] + "."
    if sum(wrapper + k in names for k in state) > sum(k in names for k in state):
        state = {wrapper + k: v for k, v in state.items()}
    else:
        wrapper = ""

    def listed(keys: list[str]) -> str:  # as the file names them
        return ", ".join(k.removeprefix(wrapper) for k in keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")

    missing = [k for k in names if k not in state and not k.endswith("num_batches_tracked")]  # older torch saved no BN counters
    extra = [k for k in state if k not in names]
    if missing or extra:
        found = [f"it lacks {listed(missing)}"] * bool(missing) + [f"it has {listed(extra)} besides"] * bool(extra)
        raise FusionctlError(f"{path} is a state dict, but not of {describe(model_cfg)}: {'; '.join(found)}; {fix}")
    state = {k: state[k].detach() if k in state else torch.zeros((), dtype=torch.long) for k in names}
    try:
        cfg = config_for(model_cfg, state)  # a built-in's widths as the weights have them
    except ValueError as exc:
        raise FusionctlError(f"{path}: weights do not match {describe(model_cfg)} ({exc}); {fix}") from exc
    shapes = entries(cfg) if cfg != model_cfg else names
    wrong = [k for k, v in shapes.items() if tuple(state[k].shape) != tuple(v.shape)]
    if wrong:
        k = wrong[0]
        raise FusionctlError(f"{path}: {listed([k])} has shape {tuple(state[k].shape)}, but {describe(cfg)} on {splits.name} "
                             f"(inputs {tuple(splits.input_shape)}, {splits.num_classes} classes) has {tuple(shapes[k].shape)}; "
                             f"set dataset=... to the data it was trained on, or {fix.removeprefix('set ')}")
    log.info("%s: a state dict saved outside fusionctl, read as %s on %s", path, describe(cfg), splits.name)
    return Base(label, path, cfg, state)


def fusion_weights(weights: list[float] | None, k: int) -> list[float]:
    """Normalised lambdas; uniform when not given."""
    if weights is None:
        return [1.0 / k] * k
    w = [float(x) for x in weights]
    if len(w) != k:
        raise FusionctlError(f"weights has {len(w)} entries but there are {k} base models; give one weight per model")
    if any(not math.isfinite(x) or x < 0 for x in w) or sum(w) <= 0:
        raise FusionctlError(f"weights must be non-negative with a positive sum, got {w}")
    return [x / sum(w) for x in w]


def spec_for(cfg: ModelConfig, splits: Splits, check: bool = True):
    """The alignment spec of `cfg` on this dataset (a traced model's depends on the input shape);
    a traced or hand-written one is checked, once per process, to keep the model's function
    under a random permutation of every group (fusion/spec_check.py), unless check is False."""
    spec = model_spec(cfg, splits.input_shape, splits.num_classes, splits.vocab)
    if cfg.name in TRACED and not check:
        log.info("%s: the alignment spec is not checked (spec_check=false)", describe(cfg))
        if spec.coverage is not None:
            spec.coverage.checked = "not checked (spec_check=false)"
    elif cfg.name in TRACED and id(spec) not in _CHECKED:  # model_spec keeps one spec object per model and dataset
        with torch.random.fork_rng(devices=[]):
            model = build_model(cfg, splits.input_shape, splits.num_classes, splits.vocab)
        example = example_input(splits.input_shape, splits.vocab)
        if cfg.spec:
            verify_spec(spec, model, example, describe(cfg), written=f"model.spec={cfg.spec}")
        else:  # the experts of a mixture move where the check confirms it, for every later model_spec too
            spec = adopt_spec(cfg, splits.input_shape, splits.num_classes, splits.vocab, verify_traced(spec, model, example, describe(cfg)))
        _CHECKED.add(id(spec))
    return spec


_CHECKED: set[int] = set()


def target_config(target: TargetConfig, base: Base, splits: Splits, spec) -> ModelConfig:
    """The fused model's config: model 0's, with `target.widths` (same meaning as model.widths) for
    a built-in, or with `target.kwargs` passed to a traced model's constructor."""
    widths, kwargs = target.widths, target.kwargs
    if base.model_cfg.name in TRACED:
        if widths is not None:
            raise FusionctlError(f"target.widths sets the widths of the built-in models; {describe(base.model_cfg)} takes its widths "
                                 "from its constructor: set target.kwargs (e.g. target.kwargs={width:128}) instead")
        return traced_target(base, dict(kwargs), splits, spec) if kwargs else base.model_cfg
    if kwargs:
        raise FusionctlError(f"target.kwargs sets a traced model's constructor arguments; {describe(base.model_cfg)} takes target.widths")
    if widths is None:
        return base.model_cfg
    if len(widths) != len(base.model_cfg.widths):
        raise FusionctlError(
            f"target.widths has {len(widths)} entries but model.widths of {base.model_cfg.name} has {len(base.model_cfg.widths)} "
            f"(hidden layers); give one width per entry"
        )
    if any(int(w) < 1 for w in widths):
        raise FusionctlError(f"target.widths must be positive, got {list(widths)}")
    return replace(base.model_cfg, widths=[int(w) for w in widths])


def traced_target(base: Base, kwargs: dict, splits: Splits, spec) -> ModelConfig:
    """model 0's traced config with `kwargs` added to its constructor's, if that builds the same
    architecture at other widths (check_width_variant)."""
    cfg = replace(base.model_cfg, kwargs={**(base.model_cfg.kwargs or {}), **kwargs})
    try:
        with torch.random.fork_rng(devices=[]):
            state = build_model(cfg, splits.input_shape, splits.num_classes, splits.vocab).state_dict()
    except FusionctlError as exc:  # the constructor refused them
        raise FusionctlError(str(exc).replace("check model.kwargs", "check target.kwargs")) from exc
    check_width_variant(cfg, state, base, splits, spec, f"target.kwargs={kwargs}")
    return cfg


def check_width_variant(cfg: ModelConfig, state: dict, base: Base, splits: Splits, spec, what: str) -> None:
    """One line unless the traced `cfg` (holding `state`) is model 0's network at other widths: the
    same entries but for aligned widths, and a spec of the same layout (AlignmentSpec.layout)."""
    try:
        spec.check_widths_only(base.state, state)
        # where model 0's experts move (confirmed by its check), this variant's must be confirmed too
        experts = getattr(spec.coverage, "experts", 0)
        variant = spec_for(cfg, splits) if experts else model_spec(cfg, splits.input_shape, splits.num_classes, splits.vocab)
        same = variant.layout() == spec.layout()
    except (ValueError, TypeError) as exc:
        raise FusionctlError(f"{what} does not build {describe(base.model_cfg)} at other widths: {str(exc).splitlines()[0]}") from exc
    if not same:
        raise FusionctlError(f"{what}: the traced alignment differs from model 0's beyond their widths (a group's layout depends on a "
                             "width); choose widths that change no layout, or fuse at model 0's widths")


def state_config(model_cfg: ModelConfig, splits: Splits, variants=()):
    """state -> the config that builds it. A built-in's widths are read from the state (config_for);
    a traced model's are its constructor's, so a state of a variant's widths (another base's, or the
    target's: target.kwargs) is built as that variant."""
    spec = model_spec(model_cfg, splits.input_shape, splits.num_classes, splits.vocab)
    known = {tuple(target_sizes(c, splits).items()): c for c in variants if c.name in TRACED and c != model_cfg}

    def config(state: dict) -> ModelConfig:
        found = known.get(tuple(spec.group_sizes(state).items())) if known else None
        return found or config_for(model_cfg, state)

    return config


def target_sizes(cfg: ModelConfig, splits: Splits) -> dict[str, int]:
    return group_sizes(cfg, splits.input_shape, splits.num_classes, splits.vocab)
