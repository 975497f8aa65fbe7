"""The resolved description of one training run; its hash is the run id."""

from __future__ import annotations

import dataclasses
from typing import Literal


@dataclasses.dataclass(frozen=True)
class DataConfig:
    store: str = ""                       # path to an HDF5 graph store (crysbench ingest / datagen)
    targets: tuple[str, ...] = ("chgnet_formation_energy_per_atom",)
    split_seed: int = 0                   # seeds the train/val/test split (not the model)
    val_frac: float = 0.1
    test_frac: float = 0.1
    train_size: int | None = None         # nested training subset (the data axis of a sweep)
    batch_size: int = 64                  # global batch, in crystals, summed over ranks
    num_workers: int = 0
    # transfer studies: the train part is cut (seeded) into a fine-tuning pool of ft_pool_size crystals
    # and a disjoint pre-training pool, so no fine-tuning crystal is ever pre-trained on
    pool: Literal["all", "pretrain", "finetune"] = "all"
    ft_pool_size: int = 1000
    # how train_size crystals are drawn (Devi et al.): random; weighted (stratified on the first
    # target's histogram, keeping its distribution); uniform (equal counts per value bin)
    sampling: Literal["random", "weighted", "uniform"] = "random"
    subset_seed: int | None = None        # seeds the draw of train_size crystals (default: split_seed)
    only_systems: tuple[int, ...] = ()    # keep only these crystal systems (0 triclinic .. 6 cubic), all parts
    drop_systems: tuple[int, ...] = ()    # drop these crystal systems from every part


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    name: str = "cgcnn"
    size: str = "s"                       # a rung of the model's size ladder


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    max_lr: float = 1e-3
    weight_decay: float = 0.0
    schedule: Literal["cosine", "onecycle", "constant"] = "cosine"
    warmup_frac: float = 0.05             # fraction of total steps spent warming up (cosine)
    grad_clip: float | None = 5.0


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    max_steps: int | None = None          # stop after this many optimizer steps
    max_flops: float | None = None        # stop when estimated training FLOPs exceed this
    early_stop_patience: int | None = None  # epochs without val improvement before stopping
    mixed_precision: Literal["none", "bf16", "fp16"] = "none"
    loss: Literal["l1", "mse"] = "l1"        # on standardized targets, masked
    seed: int = 0                         # model init and data order
    ckpt_every: int = 100                 # optimizer steps between atomic checkpoints
    device: str = "auto"                  # auto | cpu | cuda
    threads: int | None = None            # torch intra-op threads per rank (None: leave as is)
    objective: Literal["supervised", "ssl"] = "supervised"  # ssl: CrysGNN self-supervised pre-training


@dataclasses.dataclass(frozen=True)
class TransferConfig:
    init_from: str = ""                   # checkpoint to start from (e.g. runs/<id>/ckpt/best.pt)
    init_prefix: str = ""                 # strip this key prefix (e.g. "student." of a distilled model)
    skip_head: bool = True                # do not load the pre-trained head
    strategy: Literal["unfreeze_all", "new_head", "last_layer", "interaction_layers"] = "unfreeze_all"
    layers: tuple[str, ...] = ()          # interaction_layers: e.g. ["alignn:*"], ["gcn:0", "gcn:1"]
    head_extra_layers: int = 0            # fresh head with this many extra MLP layers (MPT fine-tuning: 2)
    init_normalizer: bool = False         # use the init run's target normalizer (zero-shot evaluation)
    teacher: str = ""                     # distillation: teacher run folder (its config.yaml + ckpt/best.pt)
    distill_lambda: float = 1.0           # weight of the node-embedding distance to the teacher


@dataclasses.dataclass(frozen=True)
class SSLConfig:
    """CrysGNN self-supervised pre-training: loss weights, masking, pair sampling, contrastive τ."""

    w_node: float = 1.0
    w_bond: float = 1.0
    w_multiplicity: float = 1.0
    w_spacegroup: float = 1.0
    w_contrastive: float = 1.0
    mask_frac: float = 0.15               # atoms whose features are hidden; 0 reconstructs all atoms unmasked
    negatives_per_edge: float = 1.0       # sampled unbonded pairs per bonded pair (before filtering)
    max_images: int = 4                   # multiplicity classes 1..max_images (the last is "or more")
    temperature: float = 0.1
    proj_width: int = 32                  # contrastive projection size
    exclude_stores: tuple[str, ...] = ()  # drop structures duplicating these stores' val/test parts

    def __post_init__(self) -> None:
        if not 0.0 <= self.mask_frac <= 1.0:
            raise ValueError(f"SSLConfig.mask_frac must be in [0, 1], got {self.mask_frac}")
        if self.temperature <= 0 or self.max_images < 1:
            raise ValueError(f"SSLConfig: need temperature > 0 and max_images >= 1, got "
                             f"{self.temperature}, {self.max_images}")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    transfer: TransferConfig = TransferConfig()
    ssl: SSLConfig = SSLConfig()
    out_dir: str = "runs"
    tag: str = ""                         # free text carried into results (e.g. sweep name)
