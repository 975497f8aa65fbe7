"""Transfer-learning building blocks: fine-tuning strategies and pre-trained weight loading
(:mod:`.strategies`), multi-property pre-training with a leakage guard (:mod:`.mpt`), CrysGNN-style
self-supervised pre-training (:mod:`.ssl`) and knowledge distillation (:mod:`.distill`).

Importing this package imports only torch and crysbench modules; nothing runs.
"""

from crysbench.transfer.distill import DistillModel, embedding_width
from crysbench.transfer.mpt import PretrainSelection, finetune_head, mpt_loss, mpt_pretrain_indices
from crysbench.transfer.ssl import SSLConfig, SSLModel, ssl_loss, supcon_loss
from crysbench.transfer.strategies import (
    STRATEGIES,
    LoadReport,
    apply_strategy,
    load_pretrained,
    replace_head,
    select_blocks,
    train_mode,
    trainable_parameters,
)

__all__ = ["STRATEGIES", "DistillModel", "LoadReport", "PretrainSelection", "SSLConfig", "SSLModel",
           "apply_strategy", "embedding_width", "finetune_head", "load_pretrained", "mpt_loss",
           "mpt_pretrain_indices", "replace_head", "select_blocks", "ssl_loss", "supcon_loss", "train_mode",
           "trainable_parameters"]
