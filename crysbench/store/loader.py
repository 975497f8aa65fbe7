"""Torch loading from a store: lazy per-worker shard access, atom-budget batches, block-diagonal collate.

Each worker process opens shard files on first use (handles are never pickled, and are reopened after
a fork). A request that needs many crystals of one shard loads that shard's arrays whole into a small
LRU cache (``cache_shards`` shards, so memory is bounded by shards, not by the store); a request for
a few crystals of a shard reads their byte ranges directly (``os.pread``: the writer stores every
dataset contiguous and uncompressed, so a crystal is a few reads at known offsets and no HDF5 call).
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from crysbench.store.reader import open_store
from crysbench.store.shard import read_shard

WHOLE_SHARD_FRACTION = 0.05  # load a shard whole when a request needs at least this share of it
MAX_OPEN_SHARDS = 256  # shard files kept open for byte-range reads (a descriptor and a dataset table each)
COLLATE_KEYS = ("numbers", "positions", "cells", "pbc", "ptr", "batch", "edge_i", "edge_j", "shifts",
                "edge_a", "edge_b", "targets", "mask")


class StoreDataset(Dataset):
    """Crystals of a store as per-crystal records (dicts of numpy arrays).

    ``indices`` (global crystal indices) or ``split`` (a part such as 'train' of the split file
    ``split_name``) select the crystals; ``targets`` picks target columns by name (default all);
    ``triplets`` adds the line graph (default: when the store has it). A record holds numbers [n],
    positions [n, 3] Å, cell [3, 3] Å, pbc [3], edge_index [e, 2] local (i, j), shifts [e, 3],
    targets [P] float64, mask [P] bool, index (global) and, with triplets, triplets [t, 2] local edges.
    """

    def __init__(self, store, indices: Sequence[int] | np.ndarray | None = None, split: str | None = None,
                 split_name: str = "default", targets: Sequence[str] | None = None,
                 triplets: bool | None = None, cache_shards: int = 2, verify: bool = False):
        st = open_store(store, verify=verify)
        if split is not None:
            from crysbench.store.splits import load_split

            if indices is not None:
                raise ValueError("StoreDataset: pass indices or split, not both")
            indices = load_split(st, split_name)[split]
        self.path = str(st.path)
        self.indices = np.arange(len(st)) if indices is None else np.asarray(indices, dtype=np.int64)
        names = st.target_names
        targets = names if targets is None else list(targets)
        missing = [t for t in targets if t not in names]
        if missing:
            raise ValueError(f"StoreDataset: targets {missing} not in store {self.path} (has {names})")
        self.target_names = targets
        self.target_columns = np.array([names.index(t) for t in targets], dtype=np.int64)
        self.triplets = st.spec.triplets if triplets is None else triplets
        if self.triplets and not st.spec.triplets:
            raise ValueError(f"StoreDataset: store {self.path} was ingested without triplets")
        self.files = [str(f) for f in st.shard_files]
        self.offsets = st.offsets
        self.shard_of, self.local = st.locate(self.indices)
        atoms, edges = st.sizes()
        self.n_atoms, self.n_edges = atoms[self.indices], edges[self.indices]
        self.cache_shards = max(1, cache_shards)
        self._reset()

    def _reset(self) -> None:
        for view in getattr(self, "_handles", {}).values():
            view.close()  # after a fork: the child's copies of the parent's descriptors
        self._pid = os.getpid()
        self._handles: OrderedDict = OrderedDict()
        self._cache: OrderedDict = OrderedDict()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_handles"], state["_cache"], state["_pid"] = OrderedDict(), OrderedDict(), None
        return state

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> dict:
        return self.__getitems__([k])[0]

    def __getitems__(self, ks: Sequence[int]) -> list[dict]:
        """Records of dataset positions ``ks`` (what a DataLoader batch sampler asks for)."""
        if self._pid != os.getpid():
            self._reset()  # forked (or unpickled): never share HDF5 handles across processes
        ks = np.asarray(ks, dtype=np.int64)
        shards, local = self.shard_of[ks], self.local[ks]
        out: list = [None] * len(ks)
        uniq, counts = np.unique(shards, return_counts=True)
        whole_ok = set(uniq[np.argsort(-counts, kind="stable")[: self.cache_shards]].tolist())
        for s, n in zip(uniq.tolist(), counts.tolist(), strict=True):
            where = np.nonzero(shards == s)[0]
            # a request spread over more shards than the cache holds reads the rest by slices
            src = self._source(s, n if s in whole_ok else 0)
            for w in where:
                out[w] = self._record(src, int(local[w]), int(self.indices[ks[w]]))
        return out

    def _source(self, s: int, n_wanted: int):
        """A mapping name → sliceable array for shard ``s``: cached numpy arrays or open datasets."""
        if s in self._cache:
            self._cache.move_to_end(s)
            return self._cache[s]
        shard_n = int(self.offsets[s + 1] - self.offsets[s])
        if n_wanted < WHOLE_SHARD_FRACTION * shard_n:
            return self._handle(s)
        arrays = read_shard(self.files[s], with_triplets=self.triplets, with_ids=False)
        self._cache[s] = arrays
        if len(self._cache) > self.cache_shards:
            self._cache.popitem(last=False)
        return arrays

    def _handle(self, s: int):
        """Shard ``s`` as name → row-sliceable column read by byte ranges (h5py where it cannot be).

        Opening costs one HDF5 metadata read per shard; a crystal then costs 6-8 small preads, and
        nothing of the shard stays in memory but its descriptor. At most ``MAX_OPEN_SHARDS`` stay open.
        """
        if s in self._handles:
            self._handles.move_to_end(s)
            return self._handles[s]
        view = _ShardView(self.files[s])
        self._handles[s] = view
        if len(self._handles) > MAX_OPEN_SHARDS:
            self._handles.popitem(last=False)[1].close()
        return view

    def _record(self, src, b: int, index: int) -> dict:
        a0, a1 = (int(x) for x in src["atom_ptr"][b:b + 2])
        e0, e1 = (int(x) for x in src["edge_ptr"][b:b + 2])
        rec = {"index": index, "numbers": np.asarray(src["numbers"][a0:a1], dtype=np.int64),
               "positions": np.asarray(src["positions"][a0:a1]), "cell": np.asarray(src["cells"][b]),
               "pbc": np.asarray(src["pbc"][b]), "edge_index": np.asarray(src["edge_index"][e0:e1]),
               "shifts": np.asarray(src["shifts"][e0:e1]),
               "targets": np.asarray(src["targets"][b])[self.target_columns],
               "mask": np.asarray(src["mask"][b])[self.target_columns]}
        if self.triplets:
            t0, t1 = (int(x) for x in src["triplet_ptr"][b:b + 2])
            rec["triplets"] = np.asarray(src["triplets"][t0:t1])
        return rec


class _Column:
    """Rows of one contiguous dataset of a shard file: ``col[lo:hi]`` and ``col[b]`` by one pread."""

    __slots__ = ("fd", "offset", "dtype", "shape", "row_bytes")

    def __init__(self, fd: int, offset: int | None, dtype: np.dtype, shape: tuple) -> None:
        self.fd, self.offset, self.dtype, self.shape = fd, offset, dtype, shape
        self.row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize

    def _rows(self, lo: int, hi: int) -> np.ndarray:
        lo, hi = max(0, lo), min(self.shape[0], hi)
        n = max(0, hi - lo)
        if n == 0 or self.offset is None:  # an empty dataset has no storage (and no offset)
            return np.empty((n, *self.shape[1:]), dtype=self.dtype)
        buf = os.pread(self.fd, n * self.row_bytes, self.offset + lo * self.row_bytes)
        if len(buf) != n * self.row_bytes:
            raise OSError(f"short read at byte {self.offset + lo * self.row_bytes} of a shard (truncated?)")
        return np.frombuffer(buf, dtype=self.dtype).reshape(n, *self.shape[1:])

    def __getitem__(self, key):
        if isinstance(key, slice) and key.step in (None, 1):
            return self._rows(0 if key.start is None else key.start,
                              self.shape[0] if key.stop is None else key.stop)
        return self._rows(int(key), int(key) + 1)[0]


class _ShardView(dict):
    """name → column of one shard file: :class:`_Column` for contiguous datasets, else the h5py dataset."""

    def __init__(self, path: str) -> None:
        import h5py

        super().__init__()
        self._h5 = None
        self.fd = os.open(path, os.O_RDONLY)
        with h5py.File(path, "r") as f:
            for name, d in f.items():
                if name == "ids":
                    continue
                offset = d.id.get_offset()
                if (offset is None and d.size) or d.dtype.hasobject:  # chunked / compressed: let HDF5 read it
                    self._h5 = self._h5 or h5py.File(path, "r")
                    self[name] = self._h5[name]
                else:
                    self[name] = _Column(self.fd, offset, d.dtype, d.shape)

    def __del__(self) -> None:
        self.close()

    def close(self) -> None:
        if getattr(self, "fd", None) is not None:
            os.close(self.fd)
            self.fd = None
        if getattr(self, "_h5", None) is not None:
            self._h5.close()
            self._h5 = None


def collate_records(records: Sequence[dict], dtype: torch.dtype = torch.float64,
                    with_index: bool = False) -> dict:
    """One block-diagonal batch from records: the keys of ``crysbench.graph.GraphBatch``.

    Edge atom ids are offset by each crystal's first atom, line-graph edge ids by its first edge.
    positions/cells/targets get ``dtype``; edge_a/edge_b are None without triplets. ``with_index``
    adds 'index' [B] (global crystal indices) for writing predictions.
    """
    if not records:
        raise ValueError("collate_records: empty batch")
    n_atoms = np.array([len(r["numbers"]) for r in records])
    n_edges = np.array([len(r["edge_index"]) for r in records])
    ptr = np.concatenate([[0], np.cumsum(n_atoms)])
    eptr = np.concatenate([[0], np.cumsum(n_edges)])
    edges = np.concatenate([r["edge_index"] for r in records]).astype(np.int64)
    edges += np.repeat(ptr[:-1], n_edges)[:, None]
    t = torch.from_numpy
    out = {
        "numbers": t(np.concatenate([r["numbers"] for r in records]).astype(np.int64)),
        "positions": t(np.concatenate([r["positions"] for r in records])).to(dtype),
        "cells": t(np.stack([r["cell"] for r in records])).to(dtype),
        "pbc": t(np.stack([r["pbc"] for r in records]).astype(bool)),
        "ptr": t(ptr.astype(np.int64)),
        "batch": t(np.repeat(np.arange(len(records)), n_atoms)),
        "edge_i": t(np.ascontiguousarray(edges[:, 0])), "edge_j": t(np.ascontiguousarray(edges[:, 1])),
        "shifts": t(np.concatenate([r["shifts"] for r in records]).astype(np.int64)).reshape(-1, 3),
        "edge_a": None, "edge_b": None,
        "targets": t(np.stack([r["targets"] for r in records])).to(dtype),
        "mask": t(np.stack([r["mask"] for r in records]).astype(bool)),
    }
    if "triplets" in records[0]:
        n_trip = np.array([len(r["triplets"]) for r in records])
        trip = np.concatenate([r["triplets"] for r in records]).astype(np.int64).reshape(-1, 2)
        trip += np.repeat(eptr[:-1], n_trip)[:, None]
        out["edge_a"] = t(np.ascontiguousarray(trip[:, 0]))
        out["edge_b"] = t(np.ascontiguousarray(trip[:, 1]))
    if with_index:
        out["index"] = torch.tensor([r["index"] for r in records], dtype=torch.long)
    return out


class AtomBudgetBatchSampler(Sampler):
    """Batches of dataset positions whose total atoms (and edges) stay within a budget.

    Shuffled per epoch from ``(seed, epoch)``; with ``groups`` (e.g. the shard of each item) and
    ``window``, only items of ``window`` consecutive groups (in a shuffled group order) are mixed,
    so workers touch few shards at a time. DDP: every rank builds the same batch list, which is made
    a multiple of ``world`` by splitting the largest batches (padding by repetition only when no
    batch can be split; ``drop_last`` drops the excess instead), and rank r takes the r-th block.
    """

    def __init__(self, atoms: Sequence[int], max_atoms: int, edges: Sequence[int] | None = None,
                 max_edges: int | None = None, shuffle: bool = True, seed: int = 0, rank: int = 0,
                 world: int = 1, drop_last: bool = False, groups: Sequence[int] | None = None,
                 window: int | None = None):
        self.atoms = np.asarray(atoms, dtype=np.int64)
        self.edges = None if edges is None else np.asarray(edges, dtype=np.int64)
        if max_edges is not None and self.edges is None:
            raise ValueError("AtomBudgetBatchSampler: max_edges needs the per-item edge counts")
        self.max_atoms, self.max_edges = max_atoms, max_edges
        _check_budget(self.atoms, max_atoms, "atoms")
        if max_edges is not None:
            _check_budget(self.edges, max_edges, "edges")
        if not 0 <= rank < world:
            raise ValueError(f"AtomBudgetBatchSampler: need 0 <= rank < world, got {rank}, {world}")
        self.shuffle, self.seed, self.rank, self.world, self.drop_last = shuffle, seed, rank, world, drop_last
        self.groups = None if groups is None else np.asarray(groups)
        self.window = window
        self.epoch = 0

    @classmethod
    def from_dataset(cls, dataset: StoreDataset, max_atoms: int, max_edges: int | None = None,
                     window: int | None = None, **kw) -> AtomBudgetBatchSampler:
        """Sizes and shards from ``dataset``; ``window`` defaults to its ``cache_shards`` (so each
        worker loads every shard about once per epoch); ``window=0`` shuffles globally."""
        window = dataset.cache_shards if window is None else window
        return cls(dataset.n_atoms, max_atoms, dataset.n_edges, max_edges, groups=dataset.shard_of,
                   window=window or None, **kw)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self) -> np.ndarray:
        n = len(self.atoms)
        if not self.shuffle:
            return np.arange(n)
        rng = np.random.default_rng([self.seed, self.epoch])
        if self.groups is None or self.window is None:
            return rng.permutation(n)
        uniq, inverse = np.unique(self.groups, return_inverse=True)
        group_rank = np.empty(len(uniq), dtype=np.int64)
        group_rank[rng.permutation(len(uniq))] = np.arange(len(uniq))
        return np.lexsort((rng.random(n), group_rank[inverse] // self.window))

    def _pack(self, order: np.ndarray) -> list[list[int]]:
        batches, cur, n_at, n_ed = [], [], 0, 0
        max_edges = math.inf if self.max_edges is None else self.max_edges
        for k in order.tolist():
            a = int(self.atoms[k])
            e = int(self.edges[k]) if self.edges is not None else 0
            if cur and (n_at + a > self.max_atoms or n_ed + e > max_edges):
                batches.append(cur)
                cur, n_at, n_ed = [], 0, 0
            cur.append(k)
            n_at, n_ed = n_at + a, n_ed + e
        if cur:
            batches.append(cur)
        return batches

    def _equalize(self, batches: list[list[int]]) -> list[list[int]]:
        if self.drop_last:
            return batches[: len(batches) - len(batches) % self.world]
        while len(batches) % self.world:
            big = max(range(len(batches)), key=lambda i: len(batches[i]), default=None)
            if big is None or len(batches[big]) < 2:
                break
            b = batches[big]
            batches[big:big + 1] = [b[: len(b) // 2], b[len(b) // 2:]]
        pad = (-len(batches)) % self.world
        return batches + [batches[i % len(batches)] for i in range(pad)] if batches else batches

    def batches(self) -> list[list[int]]:
        """This rank's batches for the current epoch."""
        all_batches = self._equalize(self._pack(self._order()))
        per_rank = len(all_batches) // self.world
        return all_batches[self.rank * per_rank:(self.rank + 1) * per_rank]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches())

    def __len__(self) -> int:
        return len(self.batches())


def _check_budget(sizes: np.ndarray, budget: int, what: str) -> None:
    if budget < 1:
        raise ValueError(f"AtomBudgetBatchSampler: the {what} budget must be >= 1, got {budget}")
    if sizes.size and sizes.max() > budget:
        k = int(sizes.argmax())
        raise ValueError(f"AtomBudgetBatchSampler: item {k} alone has {int(sizes[k])} {what}, over the "
                         f"budget of {budget}; raise the budget or filter large crystals")


def make_loader(dataset: StoreDataset, max_atoms: int, max_edges: int | None = None, num_workers: int = 0,
                seed: int = 0, rank: int = 0, world: int = 1, shuffle: bool = True,
                dtype: torch.dtype = torch.float64, **sampler_kw):
    """A DataLoader over ``dataset`` with an :class:`AtomBudgetBatchSampler` and :func:`collate_records`.

    Call ``loader.batch_sampler.set_epoch(epoch)`` before each epoch.
    """
    from functools import partial

    from torch.utils.data import DataLoader

    sampler = AtomBudgetBatchSampler.from_dataset(dataset, max_atoms, max_edges, shuffle=shuffle, seed=seed,
                                                  rank=rank, world=world, **sampler_kw)
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=partial(collate_records, dtype=dtype),
                      num_workers=num_workers, persistent_workers=num_workers > 0)
