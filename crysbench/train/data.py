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


def run_parts(cfg: DataConfig) -> dict[str, np.ndarray]:
    """The split's parts, restricted to (or cleared of) the crystal systems the config names."""
    parts = ensure_split(cfg)
    if not cfg.only_systems and not cfg.drop_systems:
        return parts
    from crysbench.store import open_store

    system = np.asarray(open_store(cfg.store, verify=False).column("crystal_system"))
    keep = np.ones(len(system), dtype=bool)
    if cfg.only_systems:
        keep &= np.isin(system, cfg.only_systems)
    keep &= ~np.isin(system, cfg.drop_systems)
    return {k: v[keep[v]] for k, v in parts.items()}


def train_indices(cfg: DataConfig, parts: dict[str, np.ndarray]) -> np.ndarray:
    """The training crystals: the train part (or its pre-training / fine-tuning pool), or a subset of
    ``train_size`` drawn by ``cfg.sampling`` (random subsets are nested: each inside every larger one)."""
    from crysbench.store.splits import nested_subsets

    ids = pool_indices(cfg, parts["train"])
    if cfg.pool != "all":  # transfer studies: only crystals labelled for a target of this run
        ids = ids[_labelled(cfg.store, ids, list(cfg.targets))]
    if cfg.train_size is None:
        return ids
    seed = cfg.split_seed if cfg.subset_seed is None else cfg.subset_seed
    if cfg.train_size > len(ids):
        raise ValueError(f"train_size {cfg.train_size} exceeds the {len(ids)} crystals of the "
                         f"{cfg.pool!r} pool of {cfg.store}")
    if cfg.sampling == "random":
        return nested_subsets(ids, [cfg.train_size], seed=seed)[cfg.train_size]
    values = _first_target(cfg.store, ids, cfg.targets[0])
    return sample_subset(ids, values, cfg.train_size, cfg.sampling, seed)


def pool_indices(cfg: DataConfig, train: np.ndarray) -> np.ndarray:
    """``pool='finetune'``: ``ft_pool_size`` crystals of a permutation of the train part seeded by the
    split seed; ``'pretrain'``: the rest; ``'all'``: the whole part. The two pools never overlap."""
    if cfg.pool == "all":
        return train
    if not 0 < cfg.ft_pool_size < len(train):
        raise ValueError(f"ft_pool_size {cfg.ft_pool_size} must lie in 1..{len(train) - 1} "
                         f"(the train part of {cfg.store} has {len(train)} crystals)")
    perm = np.random.default_rng([cfg.split_seed, 7]).permutation(train)
    chosen = perm[:cfg.ft_pool_size] if cfg.pool == "finetune" else perm[cfg.ft_pool_size:]
    return np.sort(chosen)


def sample_subset(ids: np.ndarray, values: np.ndarray, n: int, kind: str, seed: int,
                  bins: int = 10) -> np.ndarray:
    """``n`` of ``ids`` drawn by value: ``weighted`` keeps the histogram of ``values`` (stratified over
    ``bins`` equal-width bins, counts by largest remainder); ``uniform`` takes equal counts from every
    non-empty bin (bins with too few crystals give all they have, the rest is shared by the others)."""
    ids, values = np.asarray(ids), np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng([seed, 2])
    edges = np.linspace(values.min(), values.max(), bins + 1)
    which = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, bins - 1)
    members = [rng.permutation(np.nonzero(which == b)[0]) for b in range(bins)]
    sizes = np.array([len(m) for m in members])
    if kind == "weighted":
        share = n * sizes / sizes.sum()
        take = np.floor(share).astype(int)
        extra = np.argsort(-(share - take), kind="stable")[: n - take.sum()]
        take[extra] += 1
    elif kind == "uniform":
        take, left, open_ = np.zeros(bins, dtype=int), n, sizes > 0
        while left > 0:
            room = sizes - take
            open_ &= room > 0
            per = max(1, left // int(open_.sum()))
            for b in np.nonzero(open_)[0]:
                k = min(per, room[b], left)
                take[b] += k
                left -= k
                if left == 0:
                    break
    else:
        raise ValueError(f"sampling must be random, weighted or uniform, got {kind!r}")
    return np.sort(np.concatenate([ids[m[:k]] for m, k in zip(members, take, strict=True)]))


def _labelled(store: str, ids: np.ndarray, names: list[str]) -> np.ndarray:
    from crysbench.store import open_store

    st = open_store(store, verify=False)
    cols = [st.target_names.index(t) for t in names if t in st.target_names]
    if len(cols) != len(names):
        raise ValueError(f"{store}: targets {sorted(set(names) - set(st.target_names))} not in the store "
                         f"(has {st.target_names})")
    return np.asarray(st.column("mask"))[np.asarray(ids, dtype=np.int64)][:, cols].any(1)


def _first_target(store: str, ids: np.ndarray, name: str) -> np.ndarray:
    from crysbench.store import open_store

    st = open_store(store, verify=False)
    return np.asarray(st.column("targets"))[np.asarray(ids, dtype=np.int64), st.target_names.index(name)]


def count_train(cfg: DataConfig) -> int:
    """Size of the full training part (makes the split if needed): the data axis' upper end."""
    return int(len(run_parts(dataclasses.replace(cfg, train_size=None))["train"]))


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
    """Targets [n, P] float64 and mask [n, P] bool of crystals ``ids``: reads only those two datasets,
    one shard at a time (not the crystals' records, which would hold the whole train set in memory)."""
    import h5py

    from crysbench.store import open_store

    st = open_store(store, verify=False)
    missing = [n for n in names if n not in st.target_names]
    if missing:
        raise ValueError(f"targets {missing} not in store {store} (has {st.target_names})")
    cols = [st.target_names.index(t) for t in names]
    ids = np.asarray(ids, dtype=np.int64)
    t, m = np.zeros((len(ids), len(cols))), np.zeros((len(ids), len(cols)), dtype=bool)
    if len(ids):
        shard, local = st.locate(ids)
        for s in np.unique(shard).tolist():
            rows = np.nonzero(shard == s)[0]
            with h5py.File(st.shard_files[s], "r") as f:
                t[rows] = f["targets"][()][local[rows]][:, cols]
                m[rows] = f["mask"][()][local[rows]][:, cols]
    return torch.from_numpy(t), torch.from_numpy(m)


def make_run_data(cfg: DataConfig, de, seed: int) -> RunData:
    """Split, training subset, normalizer fitted on the training crystals, batching for this rank."""
    if not cfg.store:
        raise ValueError("data.store is empty: pass --data STORE (or use a sweep preset with the built-in set)")
    parts = run_parts(cfg)
    train = train_indices(cfg, parts)
    names = list(cfg.targets)
    targets, mask = _train_targets(cfg.store, train, names)
    empty = [n for p, n in enumerate(names) if not bool(mask[:, p].any())]
    if empty:
        raise ValueError(f"targets {empty} have no values among the {len(train)} training crystals of {cfg.store}")
    return RunData(cfg, de.rank, de.world_size, seed, train, parts["val"], parts["test"], names,
                   Normalizer.fit(targets, mask))
