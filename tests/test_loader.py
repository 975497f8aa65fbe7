"""Store loader: lazy per-worker access, atom-budget DDP batching, block-diagonal collate."""

from __future__ import annotations

import pickle
from functools import partial

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import crysbench.ops as ops
from crysbench.store import GraphSpec, open_store, write_store
from crysbench.store import loader as loader_mod
from crysbench.store.loader import AtomBudgetBatchSampler, StoreDataset, collate_records, make_loader
from crysbench.synthetic import random_batch

SPEC = GraphSpec(cutoff=4.0, max_neighbors=6, triplets=True)




class Crystal:
    def __init__(self, i, cell, positions, numbers, targets):
        self.id, self.cell, self.positions, self.numbers = f"c{i}", cell, positions, numbers
        self.pbc, self.targets = (True, True, True), targets


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    p, c, _, r = random_batch(40, atoms=(1, 8), seed=5)
    rng = np.random.default_rng(5)
    crystals = [Crystal(i, c[i].numpy(), p[r[i]:r[i + 1]].numpy(), rng.integers(1, 50, int(r[i + 1] - r[i])),
                        {"a": float(i), **({"b": -float(i)} if i % 3 else {})}) for i in range(40)]
    out = tmp_path_factory.mktemp("store")
    write_store(crystals, out, SPEC, shard_size=7)
    return out


def _same(r1: dict, r2: dict) -> None:
    assert r1.keys() == r2.keys()
    for k in r1:
        np.testing.assert_array_equal(r1[k], r2[k], err_msg=k)


def test_records_match_shards_on_both_read_paths(store, monkeypatch):
    st = open_store(store)
    ds = StoreDataset(store, targets=["b"])
    whole = ds.__getitems__(list(range(len(ds))))
    monkeypatch.setattr(loader_mod, "WHOLE_SHARD_FRACTION", 2.0)  # force per-crystal slice reads
    sliced = StoreDataset(store, targets=["b"]).__getitems__(list(range(len(ds))))
    for k, (r1, r2) in enumerate(zip(whole, sliced, strict=True)):
        _same(r1, r2)
        s, b = st.locate(k)
        a = st.read_shard(int(s))
        np.testing.assert_array_equal(r1["positions"], a["positions"][a["atom_ptr"][b]:a["atom_ptr"][b + 1]])
        assert r1["index"] == k and r1["targets"].tolist() == ([-float(k)] if k % 3 else [0.0])
        assert r1["mask"].tolist() == [bool(k % 3)]
    assert len(ds._cache) <= ds.cache_shards  # bounded by shards, not by the store


def test_indices_and_split_selection(store):
    from crysbench.store.splits import make_split

    parts = make_split(store, "t", (0.5, 0.25, 0.25), seed=0, subset_sizes=[5], dedup=False)
    ds = StoreDataset(store, split="train_5", split_name="t")
    assert [r["index"] for r in ds.__getitems__(range(5))] == parts["train_5"].tolist()
    ds = StoreDataset(store, indices=[39, 0, 17])
    assert [ds[k]["index"] for k in range(3)] == [39, 0, 17]
    with pytest.raises(ValueError, match=r"targets \['nope'\] not in store"):
        StoreDataset(store, targets=["nope"])


def test_dataset_pickles_without_handles(store, monkeypatch):
    monkeypatch.setattr(loader_mod, "WHOLE_SHARD_FRACTION", 2.0)
    ds = StoreDataset(store)
    first = ds[3]
    assert ds._handles  # a shard file is open in this process now
    clone = pickle.loads(pickle.dumps(ds))
    assert not clone._handles and not clone._cache and clone._pid is None
    _same(clone[3], first)


def test_collate_offsets_equal_a_direct_batch_graph(store):
    ds = StoreDataset(store)
    records = ds.__getitems__([4, 30, 11, 22])
    b = collate_records(records, with_index=True)
    assert set(b) == set(loader_mod.COLLATE_KEYS) | {"index"}
    assert b["index"].tolist() == [4, 30, 11, 22]
    ei, ej, sh, d, v = ops.neighbor_list(b["positions"], b["cells"], b["pbc"], b["ptr"], SPEC.cutoff)
    keep, _ = ops.knn_cap(ei, d, len(b["numbers"]), SPEC.max_neighbors)
    assert torch.equal(b["edge_i"], ei[keep]) and torch.equal(b["edge_j"], ej[keep])
    assert torch.equal(b["shifts"], sh[keep])
    ea, eb, _ = ops.triplets(ei[keep], v[keep], len(b["numbers"]))
    assert torch.equal(b["edge_a"], ea) and torch.equal(b["edge_b"], eb)
    assert torch.equal(b["batch"], torch.repeat_interleave(torch.arange(4), b["ptr"].diff()))
    assert b["targets"].shape == (4, 2) and b["mask"].dtype == torch.bool


def test_collate_without_triplets_and_dtype(store):
    ds = StoreDataset(store, triplets=False, targets=["a"])
    b = collate_records(ds.__getitems__([0, 1]), dtype=torch.float32)
    assert set(b) == set(loader_mod.COLLATE_KEYS) and b["edge_a"] is None and b["edge_b"] is None
    assert b["positions"].dtype == torch.float32 and b["targets"].tolist() == [[0.0], [1.0]]


@pytest.mark.parametrize("world", [1, 2, 3, 5])
@pytest.mark.parametrize("window", [None, 2])
def test_sampler_budget_ranks_disjoint_cover(world, window):
    rng = np.random.default_rng(world)
    atoms = rng.integers(1, 40, size=203)
    edges = atoms * rng.integers(4, 14, size=203)
    groups = np.arange(203) // 10
    per_rank = []
    for rank in range(world):
        s = AtomBudgetBatchSampler(atoms, 100, edges, 900, seed=7, rank=rank, world=world, groups=groups,
                                   window=window)
        s.set_epoch(3)
        per_rank.append(list(s))
        for batch in per_rank[-1]:
            assert batch and atoms[batch].sum() <= 100 and edges[batch].sum() <= 900
            if window:
                assert len(set(groups[batch])) <= 2 * window
    assert len({len(b) for b in per_rank}) == 1  # same number of steps on every rank
    flat = [k for batches in per_rank for b in batches for k in b]
    assert sorted(flat) == list(range(203))  # disjoint and covering


def test_sampler_epochs_and_seeds():
    atoms = np.full(50, 3)
    a = AtomBudgetBatchSampler(atoms, 10, seed=1)
    e0 = list(a)
    a.set_epoch(1)
    assert list(a) != e0
    a.set_epoch(0)
    assert list(a) == e0 == list(AtomBudgetBatchSampler(atoms, 10, seed=1))
    assert list(AtomBudgetBatchSampler(atoms, 10, shuffle=False))[0] == [0, 1, 2]
    with pytest.raises(ValueError, match="item 7 alone has 50 atoms"):
        AtomBudgetBatchSampler(np.where(np.arange(50) == 7, 50, 3), 10)


def test_sampler_pads_only_when_it_must():
    s = [AtomBudgetBatchSampler([5], 10, rank=r, world=2) for r in range(2)]
    assert [list(x) for x in s] == [[[0]], [[0]]]  # one crystal, two ranks: the only batch repeats
    dropped = [list(AtomBudgetBatchSampler([6, 6, 6], 10, rank=r, world=2, drop_last=True)) for r in range(2)]
    assert [len(b) for b in dropped] == [1, 1] and len({b[0][0] for b in dropped}) == 2
    padded = [list(AtomBudgetBatchSampler([6, 6, 6], 10, rank=r, world=2)) for r in range(2)]
    assert [len(b) for b in padded] == [2, 2]
    assert sorted({k for b in padded for x in b for k in x}) == [0, 1, 2]
    split = [list(AtomBudgetBatchSampler([3, 3, 3], 10, rank=r, world=2)) for r in range(2)]
    assert sorted(k for b in split for x in b for k in x) == [0, 1, 2]  # split, not padded


def test_dataloader_with_workers_covers_the_split(store):
    ds = StoreDataset(store)
    sampler = AtomBudgetBatchSampler.from_dataset(ds, max_atoms=20, seed=0, window=2)
    dl = DataLoader(ds, batch_sampler=sampler, num_workers=2,
                    collate_fn=partial(collate_records, with_index=True))
    seen = []
    for batch in dl:
        assert len(batch["numbers"]) <= 20
        assert int(batch["edge_i"].max()) < len(batch["numbers"])
        seen += batch["index"].tolist()
    assert sorted(seen) == list(range(40))
    dl = make_loader(ds, max_atoms=30, num_workers=0, world=2, rank=1)
    assert len(list(dl)) == len(dl.batch_sampler)


def test_byte_range_reads_match_h5py_and_survive_empty_datasets(tmp_path, monkeypatch):
    """Slice reads go by pread at the datasets' file offsets; a shard with no edges at all (its edge
    datasets have no storage, hence no offset) must read as empty arrays, not fail."""
    lonely = [Crystal(i, np.eye(3) * 20.0, np.zeros((1, 3)), np.array([26]), {"a": float(i)})
              for i in range(3)]
    write_store(lonely, tmp_path / "s", SPEC, shard_size=3)
    monkeypatch.setattr(loader_mod, "WHOLE_SHARD_FRACTION", 2.0)
    ds = StoreDataset(tmp_path / "s")
    recs = ds.__getitems__([2, 0])
    assert isinstance(ds._handles[0]["positions"], loader_mod._Column)
    assert ds._handles[0]["edge_index"].offset is None  # really the no-storage case
    assert [r["edge_index"].shape for r in recs] == [(0, 2), (0, 2)] and recs[0]["triplets"].shape == (0, 2)
    assert recs[0]["targets"].tolist() == [2.0] and recs[0]["numbers"].tolist() == [26]
    ds._handles[0].close()
