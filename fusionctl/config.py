"""Config schemas. YAML from configs/ is merged into these at the command boundary; the
library only ever sees these dataclasses (no DictConfig past commands/)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Optional

from fusionctl.errors import FusionctlError


@dataclass
class DatasetConfig:
    name: str = "mnist_small"
    val_fraction: float = 0.1
    split_seed: int = 543  # the authors' fixed train/validation split seed
    download: bool = True
    augment: Optional[bool] = None  # random crop + flip while training; default: on for CIFAR
    # heterogeneous training data: the i-th seed in `seeds` trains on client i's share
    split: str = "none"  # none | hetero | dirichlet
    hetero_class: int = 4  # hetero: client 0 sees all of this class ...
    hetero_share: float = 0.1  # ... and this share of the other classes; client 1 the rest
    clients: int = 2  # dirichlet: number of clients
    dirichlet_alpha: float = 0.5
    # text datasets (ag_news): vocabulary from the training split, sequence length in tokens
    vocab_size: int = 20000
    max_len: int = 64


@dataclass
class ModelConfig:
    name: str = "mlp"
    widths: list[int] = field(default_factory=lambda: [400, 200, 100])
    bias: bool = False
    batch_norm: bool = False  # CNNs only
    embed: int = 0  # recurrent models on text: size of the token embedding (its units are aligned too)
    arch: str = ""  # model=torchvision or timm: the classifier's name there (resnet18, mobilenet_v3_small, efficientnet_b0, ...)
    target: str = ""  # model=custom: import path of an nn.Module class or factory, e.g. mypkg.nets.MyNet
    kwargs: Optional[dict] = None  # model=custom (and torchvision, timm): keyword arguments of the constructor
    spec: str = ""  # model=custom: import path of a function returning its AlignmentSpec (instead of tracing)


@dataclass
class OptimConfig:
    name: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.5
    weight_decay: float = 0.0
    schedule: str = "constant"  # constant | cosine | step
    step_size: int = 30
    gamma: float = 0.5
    warmup_epochs: int = 0
    clip_grad: float = 0.0  # max gradient norm; 0 = off


@dataclass
class TrainConfig:
    epochs: int = 20
    batch_size: int = 64
    checkpoint: str = "best"  # which checkpoint fuse/landscape use: best (validation) | final
    amp: bool = False  # mixed precision (bfloat16 autocast) for the forward pass


OT_METHODS = ("exact", "sinkhorn")
INITS = ("auto", "model0", "random", "distill")
COSTS = ("weight", "activation", "both", "auto")
NORM_STATS = ("predict", "average")


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise FusionctlError(message)


@dataclass
class SolverSettings:
    """What every fusion method has. Each method reads only its own settings class; `baselines`
    run with their class defaults, never the main solver's fields."""

    name: str = "wb"

    def check(self) -> None:
        """One clear line for any setting out of range (called at the command boundary)."""


@dataclass
class OTBlock(SolverSettings):
    """The shared OT block of the methods that solve transport problems."""

    ot: str = "exact"  # exact | sinkhorn
    reg: float = 1e-3  # sinkhorn epsilon, relative to the largest cost
    sinkhorn_iter: int = 1000  # sinkhorn iteration cap per solve (over all annealing stages)

    def check(self) -> None:
        _require(self.ot in OT_METHODS, f"unknown solver.ot '{self.ot}'; choose from: {', '.join(OT_METHODS)}")
        _require(self.reg > 0 or self.ot == "exact", f"solver.reg must be > 0 for sinkhorn, got {self.reg}")
        _require(self.sinkhorn_iter >= 1, f"solver.sinkhorn_iter must be >= 1, got {self.sinkhorn_iter}")


@dataclass
class BarycenterBlock(OTBlock):
    """Settings of the barycenter methods (wb, gwb and ot, its one-pass special case)."""

    init: str = "auto"  # initial support: auto | model0 | random | distill
    cost: str = "weight"  # node cost: weight | activation (z-scored pre-activations) | both | auto (jobs/fuse.scoring_split)
    cost_mix: float = 0.2  # cost=both: share of the activation cost on a common scale (0 = weights only, 1 = activations only)
    act_samples: int = 512  # training inputs streamed for activation costs
    seed: int = 0  # this method's randomness: the random target of init=random|distill, the model order of sweeps
    norm_stats: str = "predict"  # fused BatchNorm variances: predict (from the probed correlations, when the cost probes) | average

    def check(self) -> None:
        super().check()
        _require(self.init in INITS, f"unknown solver.init '{self.init}'; choose from: {', '.join(INITS)}")
        _require(self.cost in COSTS, f"unknown solver.cost '{self.cost}'; choose from: {', '.join(COSTS)}")
        _require(0.0 <= self.cost_mix <= 1.0, f"solver.cost_mix must be in [0, 1], got {self.cost_mix}")
        _require(self.act_samples >= 1, f"solver.act_samples must be >= 1, got {self.act_samples}")
        _require(self.norm_stats in NORM_STATS, f"unknown solver.norm_stats '{self.norm_stats}'; choose from: {', '.join(NORM_STATS)}")


@dataclass
class WBSettings(BarycenterBlock):
    """Wasserstein barycenter. sweeps=0 cost=weight is the paper's layer-wise algorithm."""

    name: str = "wb"
    cost: str = "auto"
    sweeps: int = 10  # whole-network sweeps after the layer-wise pass (a cap: K = 2 stops when nothing changes)
    max_iter: int = 100  # re-coupling rounds per group and pass
    tol: float = 1e-5  # rounds stop below this coupling change; soft couplings: sweeps stop below this relative change of the objective

    def check(self) -> None:
        super().check()
        _require(self.sweeps >= 0, f"solver.sweeps must be >= 0 (0 = the paper's single layer-wise pass), got {self.sweeps}")
        _require(self.max_iter >= 1, f"solver.max_iter must be >= 1, got {self.max_iter}")
        _require(self.tol > 0, f"solver.tol must be > 0, got {self.tol}")


@dataclass
class GWBSettings(WBSettings):
    """Gromov-Wasserstein barycenter for recurrent nets: hidden-to-hidden weights join the matching.
    Defaults as wb's (sweeps, cost=auto); sweeps=0 cost=weight is the paper's GWB."""

    name: str = "gwb"
    alpha: float = 1.0  # weight of the hidden-to-hidden (Gromov-Wasserstein) term
    inner_iter: int = 50  # linearisation steps per outer iteration

    def check(self) -> None:
        super().check()
        _require(self.alpha >= 0, f"solver.alpha must be >= 0, got {self.alpha}")
        _require(self.inner_iter >= 1, f"solver.inner_iter must be >= 1, got {self.inner_iter}")


@dataclass
class OTFusionSettings(BarycenterBlock):
    """Singh & Jaggi OT fusion: one anchored pass, then averaging (init auto: model 0, or a random target)."""

    name: str = "ot"


@dataclass
class WMSettings(SolverSettings):
    """Git Re-Basin weight matching (coordinate descent; MergeMany for K > 2)."""

    name: str = "wm"
    sweeps: int = 100  # cap on coordinate-descent sweeps (they stop when no permutation changes)
    seed: int = 0  # this method's randomness: the group order of later sweeps

    def check(self) -> None:
        _require(self.sweeps >= 1, f"solver.sweeps must be >= 1, got {self.sweeps}")


@dataclass
class AMSettings(SolverSettings):
    """Activation matching: correlation of pre-activations, one assignment per group."""

    name: str = "am"
    act_samples: int = 512

    def check(self) -> None:
        _require(self.act_samples >= 1, f"solver.act_samples must be >= 1, got {self.act_samples}")


@dataclass
class C2M3Settings(SolverSettings):
    """Cycle-consistent merging through a universe (after Crisostomi et al., C2M3): Frank-Wolfe on weight matching's pairwise objective."""

    name: str = "c2m3"
    max_iter: int = 100  # Frank-Wolfe steps
    tol: float = 1e-6  # stop when the Frank-Wolfe gap is below this share of the objective

    def check(self) -> None:
        _require(self.max_iter >= 1, f"solver.max_iter must be >= 1, got {self.max_iter}")
        _require(self.tol > 0, f"solver.tol must be > 0, got {self.tol}")


@dataclass
class ZipItSettings(SolverSettings):
    """ZipIt!: greedy merges of correlated units within and across models (fusion/zipit.py)."""

    name: str = "zipit"
    act_samples: int = 512
    alpha: float = 0.3  # a cluster's similarities shrink by this factor each time it merges
    beta: float = 0.125  # per model, same-model merges allowed, as a share of (units removed) / K

    def check(self) -> None:
        _require(self.act_samples >= 1, f"solver.act_samples must be >= 1, got {self.act_samples}")
        _require(0 < self.alpha <= 1, f"solver.alpha must be in (0, 1], got {self.alpha}")
        _require(0 <= self.beta <= 1, f"solver.beta must be in [0, 1], got {self.beta}")


@dataclass
class AvgSettings(SolverSettings):
    """Vanilla averaging (FedAvg): no alignment."""

    name: str = "avg"


SOLVERS: dict[str, type[SolverSettings]] = {
    "wb": WBSettings, "gwb": GWBSettings, "ot": OTFusionSettings, "wm": WMSettings, "c2m3": C2M3Settings, "am": AMSettings,
    "zipit": ZipItSettings, "avg": AvgSettings,
}


def unknown_setting(name: str, key: str) -> str | None:
    """The line for `key` if method `name`'s settings class has no such setting (its name aside)."""
    known = [f.name for f in fields(SOLVERS[name]) if f.name != "name"]
    return None if key in known else f"solver={name} has no setting '{key}'; its settings are: {', '.join(known) or 'none'}"


def solver_settings(name: str, values: dict | None = None) -> SolverSettings:
    """The settings of method `name`: its class defaults, then `values`, checked."""
    _require(name in SOLVERS, f"unknown solver '{name}'; choose from: {', '.join(SOLVERS)}")
    for key in values or {}:
        if key != "name" and (problem := unknown_setting(name, key)):
            raise FusionctlError(problem)
    settings = SOLVERS[name](**{k: v for k, v in (values or {}).items() if k != "name"})
    settings.check()
    return settings


@dataclass
class FinetuneConfig:
    epochs: int = 0  # 0 = no fine-tuning
    batch_size: int = 64
    bases: bool = True  # fine-tune the base models for the same budget (a fair comparison)
    seed: int = 0  # batch order of the fine-tuning runs
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=0.01, momentum=0.9))


@dataclass
class TargetConfig:
    widths: Optional[list[int]] = None  # default: model 0's widths
    kwargs: Optional[dict] = None  # a traced model's (model=custom|torchvision|timm): constructor arguments that differ from model.kwargs


@dataclass
class LandscapeConfig:
    points: int = 25
    grid: int = 21
    margin: float = 0.25
    train_samples: int = 0  # 0: the whole training split
    test_samples: int = 0
    chunk: int = 8  # parameter points evaluated at once
    batch_size: int = 2048
    plane: bool = True


@dataclass
class CommonConfig:
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    store_dir: str = "outputs/store"
    data_dir: str = "data"
    device: str = "cpu"
    threads: int = 0  # torch threads; 0 leaves torch's default
    spec_check: bool = True  # permute a traced or given spec's groups at random and require the same outputs (fusion/spec_check.py)


@dataclass
class RunConfig(CommonConfig):
    """Every command reads the same schema, so one experiment preset serves train, fuse and landscape."""

    solver: Any = field(default_factory=lambda: {"name": "wb"})  # becomes solver.name's own settings class (SOLVERS)
    baselines: list[str] = field(default_factory=lambda: ["avg", "ot"])
    weights: Optional[list[float]] = None
    target: TargetConfig = field(default_factory=TargetConfig)
    models: Optional[list[str]] = None
    post: list[str] = field(default_factory=list)  # bn_reset | repair, each reported beside the plain model
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    landscape: LandscapeConfig = field(default_factory=LandscapeConfig)


TrainCommandConfig = FuseCommandConfig = LandscapeCommandConfig = RunConfig
