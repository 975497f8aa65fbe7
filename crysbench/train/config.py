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


@dataclasses.dataclass(frozen=True)
class TransferConfig:
    init_from: str = ""                   # checkpoint to start from (e.g. runs/<id>/ckpt/best.pt)
    init_prefix: str = ""                 # strip this key prefix (e.g. "student." of a distilled model)
    skip_head: bool = True                # do not load the pre-trained head
    strategy: Literal["unfreeze_all", "new_head", "last_layer", "interaction_layers"] = "unfreeze_all"
    layers: tuple[str, ...] = ()          # interaction_layers: e.g. ["alignn:*"], ["gcn:0", "gcn:1"]
    head_extra_layers: int = 0            # fresh head with this many extra MLP layers (MPT fine-tuning: 2)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    transfer: TransferConfig = TransferConfig()
    out_dir: str = "runs"
    tag: str = ""                         # free text carried into results (e.g. sweep name)
