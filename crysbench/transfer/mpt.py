"""Multi-property pre-training (MPT): one model, one multi-target head, a masked L1 loss over all
properties a structure has, then fine-tuning on a held-out property with a fresh two-layer head.

Leakage guard: the fine-tuning property is dropped from the pre-training targets and every
structure used for fine-tuning (train, validation and test alike) is dropped from pre-training.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from torch import Tensor, nn

from crysbench.train.metrics import masked_loss
from crysbench.transfer.strategies import replace_head


@dataclass(frozen=True)
class PretrainSelection:
    """Global store indices [M] int64 to pre-train on, the properties to pre-train, and what was removed."""

    indices: np.ndarray
    targets: tuple[str, ...]
    n_removed_ft: int  # structures dropped because fine-tuning uses them
    n_removed_empty: int  # structures dropped because no pre-training property remains


def mpt_pretrain_indices(store, ft_property: str, ft_indices: Sequence[int] | np.ndarray,
                         targets: Sequence[str] | None = None,
                         exclude_ids: Sequence[str] = ()) -> PretrainSelection:
    """Pre-training crystals of ``store``: all but ``ft_indices`` (and any whose id is in
    ``exclude_ids``, e.g. fine-tuning structures that live in another store), on ``targets``
    (default: every store property) minus ``ft_property``; crystals left with no value are dropped."""
    from crysbench.store import open_store

    st = open_store(store, verify=False)
    names = st.target_names
    if ft_property not in names:
        raise ValueError(f"mpt_pretrain_indices: fine-tuning property {ft_property!r} not in {st.path} "
                         f"(has {names})")
    keep_names = tuple(t for t in (targets or names) if t != ft_property)
    if not keep_names:
        raise ValueError(f"mpt_pretrain_indices: no pre-training property left without {ft_property!r}")
    usable = ~_ft_mask(st, ft_indices, exclude_ids)
    has_value = st.column("mask")[:, [names.index(t) for t in keep_names]].any(1)
    chosen = np.nonzero(usable & has_value)[0].astype(np.int64)
    return PretrainSelection(chosen, keep_names, int((~usable).sum()), int((usable & ~has_value).sum()))


def _ft_mask(st, ft_indices, exclude_ids: Sequence[str]) -> np.ndarray:
    """[n_crystals] bool: crystals fine-tuning uses, by index or by id."""
    n = len(st)
    idx = np.asarray(ft_indices, dtype=np.int64).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise IndexError(f"mpt_pretrain_indices: fine-tuning indices must lie in 0..{n - 1} for {st.path}")
    used = np.zeros(n, dtype=bool)
    used[idx] = True
    if len(exclude_ids):
        ids = np.asarray(st.column("ids"), dtype=object)
        used |= np.isin(ids, np.asarray(list(exclude_ids), dtype=object))
    return used


def mpt_loss(model: nn.Module, batch, target: Tensor | None = None, kind: str = "l1") -> Tensor:
    """L = (1/N)·Σ_i |ŷ_i − y_i|·δ_i over the batch's (standardised) targets [B, P] and mask δ."""
    y = batch.targets if target is None else target
    return masked_loss(model(batch), y.to(batch.positions.dtype), batch.mask, kind)


def finetune_head(model: nn.Module, n_targets: int = 1) -> nn.Module:
    """MPT fine-tuning head: a fresh MLP with two extra hidden layers on the pre-trained body."""
    return replace_head(model, n_targets=n_targets, extra_layers=2)
