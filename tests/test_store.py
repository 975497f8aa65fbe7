"""HDF5 graph store: round trip, atomic resumable ingest, corruption, multi-rank, splits, dedup."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

import crysbench.ops as ops
from crysbench.store import GraphSpec, StoreError, open_store, splits, write_store
from crysbench.store import shard as shard_mod
from crysbench.synthetic import random_batch

ROOT = Path(__file__).resolve().parents[1]
SPEC = GraphSpec(cutoff=4.0, max_neighbors=6, triplets=True)




@dataclass(frozen=True)
class Crystal:
    id: str
    cell: np.ndarray
    positions: np.ndarray
    numbers: np.ndarray
    pbc: tuple = (True, True, True)
    targets: dict = field(default_factory=dict)


def make_crystals(n: int = 23, seed: int = 0) -> list[Crystal]:
    """Random small cells, one lonely atom (no edges), targets partly missing."""
    p, c, _, r = random_batch(n - 1, atoms=(1, 5), seed=seed)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n - 1):
        n_at = int(r[i + 1] - r[i])
        targets = {"e_form": float(rng.normal())} if i % 4 else {"e_form": -1.0, "gap": float(i)}
        out.append(Crystal(f"c{i}", c[i].numpy(), p[r[i]:r[i + 1]].numpy(), rng.integers(1, 84, n_at),
                           targets=targets))
    out.append(Crystal("lonely", np.eye(3) * 10.0, np.zeros((1, 3)), np.array([26]), targets={"gap": 0.5}))
    return out


def direct_graph(c: Crystal, spec: GraphSpec):
    """The graph of one crystal straight from the ops facade: (edge_index [E,2], shifts [E,3], triplets)."""
    pos, cell = torch.tensor(c.positions), torch.tensor(c.cell)[None]
    ei, ej, sh, d, v = ops.neighbor_list(pos, cell, torch.ones(1, 3, dtype=torch.bool),
                                         torch.tensor([0, len(pos)]), spec.cutoff)
    keep, _ = ops.knn_cap(ei, d, len(pos), spec.max_neighbors)
    ea, eb, _ = ops.triplets(ei[keep], v[keep], len(pos))
    return torch.stack([ei[keep], ej[keep]], 1).numpy(), sh[keep].numpy(), torch.stack([ea, eb], 1).numpy()


def checksums(path) -> list[str]:
    return [s["sha256"] for s in json.loads((Path(path) / "manifest.json").read_text())["shards"]]


@pytest.fixture(scope="module")
def crystals():
    return make_crystals()


@pytest.fixture(scope="module")
def store(tmp_path_factory, crystals):
    out = tmp_path_factory.mktemp("store")
    write_store(crystals, out, SPEC, shard_size=5)
    return out


def test_round_trip_records_and_graphs(store, crystals):
    st = open_store(store)
    assert len(st) == len(crystals) and st.target_names == ["e_form", "gap"]
    assert [s["file"] for s in st.manifest["shards"]] == [f"shard-0000{i}.h5" for i in range(5)]
    for s in range(5):
        a = st.read_shard(s)
        for b, c in enumerate(crystals[5 * s: 5 * s + 5]):
            a0, a1 = a["atom_ptr"][b:b + 2]
            e0, e1 = a["edge_ptr"][b:b + 2]
            t0, t1 = a["triplet_ptr"][b:b + 2]
            assert a["ids"][b] == c.id
            np.testing.assert_array_equal(a["numbers"][a0:a1], c.numbers)
            np.testing.assert_array_equal(a["positions"][a0:a1], c.positions)
            np.testing.assert_array_equal(a["cells"][b], c.cell)
            edges, shifts, trip = direct_graph(c, SPEC)
            np.testing.assert_array_equal(a["edge_index"][e0:e1], edges, err_msg=f"crystal {c.id}")
            np.testing.assert_array_equal(a["shifts"][e0:e1], shifts, err_msg=f"crystal {c.id}")
            np.testing.assert_array_equal(a["triplets"][t0:t1], trip, err_msg=f"crystal {c.id}")
            for p, name in enumerate(st.target_names):
                assert a["mask"][b, p] == (name in c.targets)
                assert a["targets"][b, p] == c.targets.get(name, 0.0)
    assert st.read_shard(4)["edge_ptr"][-1] - st.read_shard(4)["edge_ptr"][-2] == 0  # the lonely atom


def test_manifest_contents(store, crystals):
    m = open_store(store).manifest
    assert m["schema_version"] == 1 and m["graph_spec"] == SPEC.to_dict()
    gaps = [c.targets["gap"] for c in crystals if "gap" in c.targets]
    assert m["targets"]["stats"]["gap"]["count"] == len(gaps)
    assert m["targets"]["stats"]["gap"]["mean"] == pytest.approx(np.mean(gaps))
    assert m["targets"]["stats"]["gap"]["std"] == pytest.approx(np.std(gaps))
    assert m["n_atoms"] == sum(len(c.numbers) for c in crystals)
    assert m["n_edges"] == sum(s["n_edges"] for s in m["shards"]) > 0


def test_symmetry_labels_known_cells():
    a = 3.6
    fcc = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]) * a
    assert shard_mod.symmetry_labels(np.eye(3) * a, fcc, np.full(4, 29), (True,) * 3) == (225, 6)
    hexagonal = np.array([[3.0, 0, 0], [-1.5, 1.5 * 3**0.5, 0], [0, 0, 5.0]])
    labels = shard_mod.symmetry_labels(hexagonal, np.zeros((1, 3)), np.array([6]), (True,) * 3)
    assert labels == (191, 5)
    edges = (1, 2, 3, 15, 16, 74, 75, 142, 143, 167, 168, 194, 195, 230)
    assert [shard_mod.crystal_system(s) for s in edges] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6]
    assert shard_mod.crystal_system(0) == -1


def test_shift_dtype_fits_range():
    assert shard_mod._smallest_int(np.array([[127, -128, 0]]), "s").dtype == np.int8
    assert shard_mod._smallest_int(np.array([[300, 0, 0]]), "s").dtype == np.int16
    assert shard_mod._smallest_int(np.array([[0, -40000, 0]]), "s").dtype == np.int32


def test_bad_records_name_the_crystal(tmp_path, crystals):
    bad = [*crystals[:3], Crystal("broken", np.eye(3), np.zeros((2, 3)), np.array([1]))]
    with pytest.raises(ValueError, match=r"crystal 3 \(id 'broken'\)"):
        write_store(bad, tmp_path, SPEC, shard_size=2)
    new = Crystal("x", np.eye(3) * 3, np.zeros((1, 3)), np.array([1]), targets={"new": 1.0})
    extra = [*crystals[:3], new]
    with pytest.raises(ValueError, match="'new'.*not among the store's target_names"):
        write_store(extra, tmp_path, SPEC, target_names=["e_form", "gap"], shard_size=2)


class Boom(RuntimeError):
    pass


def _crash_after(crystals, n):
    for k, c in enumerate(crystals):
        if k == n:
            raise Boom("source died")
        yield c


def test_crash_then_resume_matches_uninterrupted(tmp_path, store, crystals, monkeypatch):
    out = tmp_path / "s"
    with pytest.raises(Boom):
        write_store(_crash_after(crystals, 12), out, SPEC, shard_size=5)
    assert sorted(p.name for p in out.glob("*.h5")) == ["shard-00000.h5", "shard-00001.h5"]
    assert not (out / "manifest.json").exists() and not list(out.glob("*.tmp"))
    with pytest.raises(StoreError, match="no manifest.json"):
        open_store(out)
    built = []
    real = shard_mod.add_graphs
    monkeypatch.setattr(shard_mod, "add_graphs", lambda a, s: built.append(a["ids"][0]) or real(a, s))
    write_store(crystals, out, SPEC, shard_size=5)
    assert built == ["c10", "c15", "c20"]  # shards 0 and 1 were verified and kept
    assert checksums(out) == checksums(store)


def test_sigkill_mid_shard_leaves_no_published_half(tmp_path, store, crystals):
    out = tmp_path / "s"
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(ROOT)!r}); sys.path.insert(0, {str(Path(__file__).parent)!r})
        import test_store as t
        real = os.replace
        def replace(src, dst):
            if str(src).endswith("shard-00002.h5.tmp"):
                os.kill(os.getpid(), signal.SIGKILL)  # shard 2 fully written to .tmp, not yet renamed
            real(src, dst)
        os.replace = replace
        t.write_store(t.make_crystals(), {str(out)!r}, t.SPEC, shard_size=5)
    """)
    env = {**os.environ, "CRYSBENCH_OPS": os.environ.get("CRYSBENCH_OPS", "native")}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    assert (out / "shard-00002.h5.tmp").exists() and not (out / "shard-00002.h5").exists()
    assert not (out / "manifest.json").exists()
    write_store(crystals, out, SPEC, shard_size=5)
    assert checksums(out) == checksums(store)


def test_changed_input_rewrites_its_shard(tmp_path, store, crystals):
    out = tmp_path / "s"
    changed = list(crystals)
    changed[7] = Crystal("c7-new", crystals[7].cell, crystals[7].positions, crystals[7].numbers,
                         targets=crystals[7].targets)
    write_store(changed, out, SPEC, shard_size=5)
    write_store(crystals, out, SPEC, shard_size=5)
    assert checksums(out) == checksums(store)


def test_corrupted_shard_is_named(tmp_path, store):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(store, out)
    f = out / "shard-00001.h5"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    expected = checksums(out)[1]
    with pytest.raises(StoreError, match=rf"shard-00001\.h5 is corrupted: sha256 [0-9a-f]{{64}}, manifest "
                                         rf"expects {expected}"):
        open_store(out)
    open_store(out, verify=False)  # same size: only hashing catches a flipped byte
    f.write_bytes(bytes(data[:-10]))
    with pytest.raises(StoreError, match=r"shard-00001\.h5: \d+ bytes, manifest expects"):
        open_store(out, verify=False)


def test_schema_version_checked(tmp_path, store):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(store, out)
    m = json.loads((out / "manifest.json").read_text())
    m["schema_version"] = 99
    (out / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(StoreError, match="schema version 99"):
        open_store(out)


def test_two_ranks_match_one_rank(tmp_path, store, crystals):
    out = tmp_path / "s"
    calls = []
    rank1 = write_store(crystals, out, SPEC, shard_size=5, rank=1, world=2, barrier=lambda: calls.append(1))
    assert rank1 is None
    assert sorted(p.name for p in out.glob("*.h5")) == ["shard-00001.h5", "shard-00003.h5"]
    with pytest.raises(StoreError):  # rank 0 alone, before rank 1 finished, must not publish
        write_store(crystals, tmp_path / "t", SPEC, shard_size=5, rank=0, world=2)
    write_store(crystals, out, SPEC, shard_size=5, rank=0, world=2, barrier=lambda: calls.append(0))
    assert calls == [1, 0] and checksums(out) == checksums(store)


def test_describe(store, tmp_path):
    from crysbench.store.cli import describe

    d = describe(store, png=tmp_path / "d.png")
    assert d["n_crystals"] == 23 and sum(d["crystal_systems"].values()) == 23
    assert d["targets"]["gap"]["count"] == 7 and (tmp_path / "d.png").stat().st_size > 1000


# ------------------------------------------------------------------------------------------------
# splits and duplicates
# ------------------------------------------------------------------------------------------------
def test_random_split_seeded_disjoint_covering():
    a = splits.random_split(1000, (0.8, 0.1, 0.1), seed=3)
    assert [len(a[k]) for k in splits.PARTS] == [800, 100, 100]
    assert np.array_equal(np.sort(np.concatenate(list(a.values()))), np.arange(1000))
    b = splits.random_split(1000, (0.8, 0.1, 0.1), seed=3)
    c = splits.random_split(1000, (0.8, 0.1, 0.1), seed=4)
    assert all(np.array_equal(a[k], b[k]) for k in a) and not np.array_equal(a["test"], c["test"])


def test_groups_never_straddle():
    groups = np.random.default_rng(0).integers(0, 150, size=1000)
    parts = splits.random_split(1000, (0.7, 0.15, 0.15), seed=1, groups=groups)
    sets = [set(groups[parts[k]].tolist()) for k in splits.PARTS]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert abs(len(parts["test"]) - 150) < 40


def test_nested_subsets():
    train = np.arange(100, 1100)
    subs = splits.nested_subsets(train, [1000, 10, 200, 50], seed=0)
    assert [len(subs[s]) for s in (10, 50, 200, 1000)] == [10, 50, 200, 1000]
    assert set(subs[10]) <= set(subs[50]) <= set(subs[200]) <= set(train)
    assert np.array_equal(subs[50], splits.nested_subsets(train, [50], seed=0)[50])
    with pytest.raises(ValueError, match="outside 1..1000"):
        splits.nested_subsets(train, [1001])


def _dup_crystals() -> list[Crystal]:
    """NaCl rock salt four times (shifted, rotated, supercell, strained 1%) plus distinct structures."""
    a = 5.64
    frac = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    pos = np.concatenate([frac, frac + 0.5]) * a
    z = np.array([11] * 4 + [17] * 4)
    th = 0.3
    rot = np.array([[np.cos(th), -np.sin(th), 0], [np.sin(th), np.cos(th), 0], [0, 0, 1]])
    sup = np.concatenate([pos, pos + [a, 0, 0]])
    return [
        Crystal("nacl", np.eye(3) * a, pos, z),
        Crystal("cscl", np.eye(3) * 4.1, np.array([[0, 0, 0], [2.05] * 3]), np.array([55, 17])),
        Crystal("nacl-shift", np.eye(3) * a, pos + 0.7, z),
        Crystal("fe", np.eye(3) * 2.87, np.array([[0, 0, 0], [1.435] * 3]), np.array([26, 26])),
        Crystal("nacl-rot", np.eye(3) * a @ rot.T, pos @ rot.T, z),
        Crystal("nacl-super", np.diag([2 * a, a, a]), sup, np.concatenate([z, z])),
        Crystal("nacl-zb", np.eye(3) * a, np.concatenate([frac, frac + 0.25]) * a, z),  # other structure
        Crystal("nacl-strain", np.eye(3) * a * 1.01, pos * 1.01, z),
    ]


def test_duplicate_groups_and_split_files(tmp_path):
    write_store(_dup_crystals(), tmp_path, GraphSpec(cutoff=3.0, max_neighbors=4), shard_size=3)
    groups = splits.duplicate_groups(tmp_path)
    assert groups.tolist() == [0, 1, 0, 3, 0, 0, 6, 0]
    for seed in range(20):
        parts = splits.random_split(len(groups), (0.5, 0.25, 0.25), seed=seed, groups=groups)
        where = [set(groups[parts[p]].tolist()) for p in splits.PARTS]
        assert not (where[0] & where[1] or where[0] & where[2] or where[1] & where[2])
    parts = splits.make_split(tmp_path, "dd", (0.5, 0.25, 0.25), seed=3, subset_sizes=[1])
    assert len(set(groups[parts["train"]]) & set(groups[parts["test"]])) == 0
    assert set(parts["train_1"]) <= set(parts["train"])
    loaded = splits.load_split(tmp_path, "dd")
    assert set(loaded) == {"train", "val", "test", "train_1"}
    assert open_store(tmp_path).manifest["splits"] == {"dd": "split-dd.json"}


def test_filter_pool(tmp_path):
    crystals = _dup_crystals()
    write_store(crystals[:4], tmp_path / "test", GraphSpec(cutoff=3.0, max_neighbors=4))
    pool = [*crystals[4:], Crystal("fe", np.eye(3) * 2.9, np.zeros((1, 3)), np.array([26]))]
    write_store(pool, tmp_path / "pool", GraphSpec(cutoff=3.0, max_neighbors=4))
    kept = splits.filter_pool(tmp_path / "pool", tmp_path / "test", test_indices=[0, 1, 3])
    assert kept.tolist() == [2]  # rot, super, strain match NaCl; 'fe' shares an id with the test set
    assert splits.filter_pool(["a", "b", "c"], ["b"]).tolist() == [0, 2]


def fake_read(source, format, targets=None, on_error="fail"):
    """Stands in for crysbench.data.readers.read (module level, so spawned workers can import it)."""
    assert format == "fake" and on_error == "skip"
    return make_crystals()


def test_ingest_verb_one_and_two_workers(tmp_path, store):
    import hashlib

    from crysbench.store.cli import ingest

    src = tmp_path / "src.txt"
    src.write_text("source bytes")
    m = ingest(str(src), "fake", tmp_path / "a", SPEC, on_error="skip", shard_size=5, reader=fake_read)
    assert m["n_crystals"] == 23 and checksums(tmp_path / "a") == checksums(store)
    assert m["sources"] == [{"path": str(src), "sha256": hashlib.sha256(b"source bytes").hexdigest()}]
    ingest(str(src), "fake", tmp_path / "b", SPEC, on_error="skip", shard_size=5, workers=2, reader=fake_read)
    assert checksums(tmp_path / "b") == checksums(store)
