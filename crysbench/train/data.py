"""What the trainer needs from a store: split, normalizer, and deterministic per-rank batches.

Global batches hold ``batch_size`` crystals drawn from a permutation seeded by (seed, epoch); rank
r of W takes the r-th slice of each global batch, so W ranks see exactly the crystals one rank
would, and DDP's gradient average equals the one-rank gradient (same global batch).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from functools import partial

import numpy as np
import torch

from crysbench.graph import GraphBatch
from crysbench.train.config import DataConfig
from crysbench.train.metrics import Normalizer


def split_name(cfg: DataConfig) -> str:
    return f"s{cfg.split_seed}-v{round(cfg.val_frac * 1000)}-t{round(cfg.test_frac * 1000)}"


def ensure_split(cfg: DataConfig) -> dict[str, np.ndarray]:
    """Load the run's split, making (and writing) it once if the store has none of that name."""
    from crysbench.store.splits import load_split, make_split
    from crysbench.store.reader import StoreError

    try:
        return load_split(cfg.store, split_name(cfg))
    except StoreError:
        fr = (1.0 - cfg.val_frac - cfg.test_frac, cfg.val_frac, cfg.test_frac)
        return make_split(cfg.store, split_name(cfg), fractions=fr, seed=cfg.split_seed)


def train_indices(cfg: DataConfig, parts: dict[str, np.ndarray]) -> np.ndarray:
    """The training crystals: the whole train part or a nested subset of ``train_size``."""
    from crysbench.store.splits import nested_subsets

    if cfg.train_size is None:
        return parts["train"]
    return nested_subsets(parts["train"], [cfg.train_size], seed=cfg.split_seed)[cfg.train_size]


def count_train(cfg: DataConfig) -> int:
    """Size of the full training part (makes the split if needed): the data axis' upper end."""
    return int(len(ensure_split(dataclasses.replace(cfg, train_size=None))["train"]))


@dataclasses.dataclass
class RunData:
    cfg: DataConfig
    rank: int
    world: int
    seed: int
    train_ids: np.ndarray
    val_ids: np.ndarray
    test_ids: np.ndarray
    target_names: list[str]
    normalizer: Normalizer

    @property
    def n_train(self) -> int:
        return len(self.train_ids)

    @property
    def steps_per_epoch(self) -> int:
        return max(1, len(self.train_ids) // self._global_batch())

    def _global_batch(self) -> int:
        return min(self.cfg.batch_size, len(self.train_ids))

    def _dataset(self, ids):
        from crysbench.store.loader import StoreDataset

        return StoreDataset(self.cfg.store, indices=ids, targets=self.target_names)

    def _loader(self, ids: np.ndarray, batches: list[list[int]]) -> Iterator[GraphBatch]:
        from torch.utils.data import DataLoader

        from crysbench.store.loader import collate_records

        loader = DataLoader(self._dataset(ids), batch_sampler=batches, num_workers=self.cfg.num_workers,
                            collate_fn=partial(collate_records, dtype=torch.float32))
        for b in loader:
            yield GraphBatch(**{k: v for k, v in b.items() if k != "index"})

    def train_batches(self, epoch: int) -> Iterator[GraphBatch]:
        """This rank's share of each global batch of epoch ``epoch`` (drops the ragged tail)."""
        g = self._global_batch()
        if g % self.world:
            raise ValueError(f"batch_size {g} must be divisible by the {self.world} ranks")
        perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.train_ids))
        per = g // self.world
        batches = [perm[s + self.rank * per: s + (self.rank + 1) * per].tolist()
                   for s in range(0, self.steps_per_epoch * g, g)]
        return self._loader(self.train_ids, batches)

    def _eval_batches(self, ids: np.ndarray) -> Iterator[GraphBatch]:
        g = max(self.cfg.batch_size, 64)
        return self._loader(ids, [list(range(s, min(s + g, len(ids)))) for s in range(0, len(ids), g)])

    def val_batches(self) -> Iterator[GraphBatch]:
        return self._eval_batches(self.val_ids)

    def test_batches(self) -> Iterator[GraphBatch]:
        return self._eval_batches(self.test_ids)

    def global_graphs(self, batch: GraphBatch) -> int:
        return batch.num_crystals * self.world


def _train_targets(store: str, ids: np.ndarray, names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    from crysbench.store.loader import StoreDataset

    ds = StoreDataset(store, indices=ids, targets=names)
    recs = ds.__getitems__(list(range(len(ds))))
    t = torch.from_numpy(np.stack([r["targets"] for r in recs])) if recs else torch.zeros(0, len(names))
    m = torch.from_numpy(np.stack([r["mask"] for r in recs])) if recs else torch.zeros(0, len(names), dtype=bool)
    return t, m


def make_run_data(cfg: DataConfig, de, seed: int) -> RunData:
    """Split, training subset, normalizer fitted on the training crystals, batching for this rank."""
    if not cfg.store:
        raise ValueError("data.store is empty: pass --data STORE (or use a sweep preset with the built-in set)")
    parts = ensure_split(cfg)
    train = train_indices(cfg, parts)
    names = list(cfg.targets)
    targets, mask = _train_targets(cfg.store, train, names)
    empty = [n for p, n in enumerate(names) if not bool(mask[:, p].any())]
    if empty:
        raise ValueError(f"targets {empty} have no values among the {len(train)} training crystals of {cfg.store}")
    return RunData(cfg, de.rank, de.world_size, seed, train, parts["val"], parts["test"], names,
                   Normalizer.fit(targets, mask))
