"""Config schemas. YAML from configs/ is merged into these at the command boundary; the
library only ever sees these dataclasses (no DictConfig past commands/)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


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


@dataclass
class SolverConfig:
    name: str = "wb"
    ot: str = "exact"  # exact | sinkhorn
    reg: float = 1e-3  # sinkhorn epsilon, relative to the largest cost
    init: str = "auto"  # auto | model0 | random | distill
    max_iter: int = 100
    tol: float = 1e-5
    sinkhorn_iter: int = 2000
    seed: int = 0  # for random / distill targets
    cost: str = "weight"  # node cost for wb/gwb/ot: weight | activation (pre-activations on a fixed batch)
    act_samples: int = 256  # training inputs used for activation costs and `am`
    alpha: float = 1.0  # gwb: weight of the hidden-to-hidden (Gromov-Wasserstein) term
    inner_iter: int = 50  # gwb: linearisation steps per outer iteration


@dataclass
class FinetuneConfig:
    epochs: int = 0  # 0 = no fine-tuning
    batch_size: int = 64
    bases: bool = True  # fine-tune the base models for the same budget (a fair comparison)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=0.01, momentum=0.9))


@dataclass
class TargetConfig:
    widths: Optional[list[int]] = None  # default: model 0's widths


@dataclass
class LandscapeConfig:
    points: int = 25
    grid: int = 21
    margin: float = 0.25
    train_samples: int = 0  # 0: the whole training split
    test_samples: int = 0
    chunk: int = 8  # parameter points evaluated at once
    batch_size: int = 2048
    bn_reset: bool = False
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


@dataclass
class RunConfig(CommonConfig):
    """Every command reads the same schema, so one experiment preset serves train, fuse and landscape."""

    solver: SolverConfig = field(default_factory=SolverConfig)
    baselines: list[str] = field(default_factory=lambda: ["avg", "ot"])
    weights: Optional[list[float]] = None
    target: TargetConfig = field(default_factory=TargetConfig)
    models: Optional[list[str]] = None
    post: list[str] = field(default_factory=list)  # bn_reset | repair, each reported beside the plain model
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    landscape: LandscapeConfig = field(default_factory=LandscapeConfig)


TrainCommandConfig = FuseCommandConfig = LandscapeCommandConfig = RunConfig
