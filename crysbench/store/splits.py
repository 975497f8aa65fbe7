"""Seeded train/val/test splits, nested training subsets, duplicate grouping and pool filtering.

Duplicates are grouped by reduced composition first and compared with pymatgen's StructureMatcher
only inside a composition, so dedup costs little on real datasets. Whole groups go to one part, so
no structure sits in both train and test. Split files (``split-<name>.json``) sit next to the
manifest, carry the store's fingerprint, and are listed in the manifest's ``splits``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from crysbench.store.manifest import MANIFEST, StoreError, read_json, write_json_atomic
from crysbench.store.reader import Store, open_store

PARTS = ("train", "val", "test")


def random_split(n: int, fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0,
                 groups: Sequence[int] | None = None) -> dict[str, np.ndarray]:
    """Sorted index arrays 'train'/'val'/'test' of ``n`` items; whole ``groups`` stay in one part."""
    if len(fractions) != 3 or min(fractions) < 0 or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        raise ValueError(f"random_split: fractions must be 3 non-negative numbers summing to 1, "
                         f"got {fractions}")
    labels = np.arange(n) if groups is None else np.asarray(groups)
    if labels.shape != (n,):
        raise ValueError(f"random_split: groups must have one label per item ({n}), got {labels.shape}")
    uniq, inverse, sizes = np.unique(labels, return_inverse=True, return_counts=True)
    order = np.random.default_rng(seed).permutation(len(uniq))
    start = np.concatenate([[0], np.cumsum(sizes[order])[:-1]])  # items before each group, in order
    bounds = np.round(np.cumsum(fractions)[:2] * n)
    part_of_group = np.empty(len(uniq), dtype=np.int64)
    part_of_group[order] = np.searchsorted(bounds, start, side="right")
    part = part_of_group[inverse]
    return {name: np.nonzero(part == p)[0] for p, name in enumerate(PARTS)}


def nested_subsets(train: np.ndarray, sizes: Sequence[int], seed: int = 0) -> dict[int, np.ndarray]:
    """Training subsets of the given sizes, each inside every larger one (prefixes of one permutation)."""
    train = np.asarray(train)
    too_big = [s for s in sizes if s > len(train) or s < 1]
    if too_big:
        raise ValueError(f"nested_subsets: sizes {too_big} outside 1..{len(train)} (the training set)")
    perm = np.random.default_rng([seed, 1]).permutation(train)
    return {int(s): np.sort(perm[:s]) for s in sorted(sizes)}


# ---------------------------------------------------------------------------------------------
# duplicates
# ---------------------------------------------------------------------------------------------
def composition_key(numbers: np.ndarray) -> tuple:
    """Reduced composition as a sorted tuple of (Z, count / gcd)."""
    z, counts = np.unique(np.asarray(numbers), return_counts=True)
    g = int(np.gcd.reduce(counts))
    return tuple(zip(z.tolist(), (counts // g).tolist(), strict=True))


def _store_geometry(store: Store, wanted: set[int] | None = None):
    """Yield (global index, numbers, positions, cell) for the crystals of a store (``wanted`` only)."""
    import h5py

    for s, f in enumerate(store.shard_files):
        lo = int(store.offsets[s])
        with h5py.File(f, "r") as h:
            ptr, numbers = h["atom_ptr"][()], h["numbers"][()]
            need = wanted is None or any(lo + b in wanted for b in range(len(ptr) - 1))
            pos, cells = (h["positions"][()], h["cells"][()]) if need else (None, None)
        for b in range(len(ptr) - 1):
            if wanted is None or lo + b in wanted:
                sl = slice(ptr[b], ptr[b + 1])
                yield lo + b, numbers[sl], pos[sl], cells[b]


def _composition_groups(store: Store) -> dict[tuple, list[int]]:
    import h5py

    groups: dict[tuple, list[int]] = defaultdict(list)
    for s, f in enumerate(store.shard_files):
        with h5py.File(f, "r") as h:
            ptr, numbers = h["atom_ptr"][()], h["numbers"][()]
        for b in range(len(ptr) - 1):
            groups[composition_key(numbers[ptr[b]:ptr[b + 1]])].append(int(store.offsets[s]) + b)
    return groups


def _structure(numbers, positions, cell):
    from pymatgen.core import Lattice, Structure

    return Structure(Lattice(cell), numbers.tolist(), positions, coords_are_cartesian=True)


def _matcher():
    from pymatgen.analysis.structure_matcher import StructureMatcher

    return StructureMatcher()  # pymatgen defaults: ltol 0.2, stol 0.3, angle_tol 5°, primitive cells


def duplicate_groups(store) -> np.ndarray:
    """Group label [n_crystals] per crystal: the smallest index of its group of matching structures."""
    st = open_store(store, verify=False)
    labels = np.arange(len(st))
    comps = [idx for idx in _composition_groups(st).values() if len(idx) > 1]
    wanted = {i for idx in comps for i in idx}
    structs = {i: _structure(z, p, c) for i, z, p, c in _store_geometry(st, wanted)}
    matcher = _matcher()
    for idx in comps:
        index_of = {id(structs[i]): i for i in idx}
        for group in matcher.group_structures([structs[i] for i in idx]):
            members = [index_of[id(s)] for s in group]
            labels[members] = min(members)
    return labels


def filter_pool(pool, test, test_indices: Sequence[int] | None = None) -> np.ndarray:
    """Indices of ``pool`` items that duplicate nothing in ``test`` (for pre-training pools).

    ``pool`` and ``test`` are stores (path or Store) or sequences of ids. Items whose id appears in
    the test ids are dropped; when both are stores, so are structures StructureMatcher matches to a
    test structure of the same reduced composition. ``test_indices`` restricts a test store.
    """
    pool_store = None if _is_ids(pool) else open_store(pool, verify=False)
    test_store = None if _is_ids(test) else open_store(test, verify=False)
    pool_ids = list(pool) if pool_store is None else pool_store.column("ids")
    test_all = list(test) if test_store is None else test_store.column("ids")
    chosen = np.arange(len(test_all)) if test_indices is None else np.asarray(test_indices)
    test_ids = {test_all[i] for i in chosen}
    drop = {k for k, cid in enumerate(pool_ids) if cid in test_ids}
    if pool_store is not None and test_store is not None:
        drop |= _structural_matches(pool_store, test_store, set(chosen.tolist()), drop)
    return np.array([k for k in range(len(pool_ids)) if k not in drop], dtype=np.int64)


def _is_ids(x) -> bool:
    return isinstance(x, (list, tuple, np.ndarray)) and all(isinstance(v, str) for v in x)


def _structural_matches(pool: Store, test: Store, test_wanted: set[int], already: set[int]) -> set[int]:
    test_comp = {k: [i for i in idx if i in test_wanted] for k, idx in _composition_groups(test).items()}
    test_comp = {k: v for k, v in test_comp.items() if v}
    pool_comp = {k: [i for i in idx if i not in already]
                 for k, idx in _composition_groups(pool).items() if k in test_comp}
    pool_want = {i for v in pool_comp.values() for i in v}
    test_want = {i for k in pool_comp for i in test_comp[k]}
    ps = {i: _structure(z, p, c) for i, z, p, c in _store_geometry(pool, pool_want)}
    ts = {i: _structure(z, p, c) for i, z, p, c in _store_geometry(test, test_want)}
    matcher = _matcher()
    return {i for k, idx in pool_comp.items() for i in idx
            if any(matcher.fit(ps[i], ts[j]) for j in test_comp[k])}


# ---------------------------------------------------------------------------------------------
# split files
# ---------------------------------------------------------------------------------------------
def split_file(name: str) -> str:
    if not name.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"split name must be letters, digits, '-' or '_', got {name!r}")
    return f"split-{name}.json"


def write_split(store, name: str, parts: dict[str, np.ndarray], info: dict | None = None) -> str:
    """Write ``split-<name>.json`` atomically and list it in the manifest; returns the file name."""
    st = open_store(store, verify=False)
    fname = split_file(name)
    body = {"name": name, "store_fingerprint": st.fingerprint(), "n_crystals": len(st), "info": info or {},
            "counts": {k: int(len(v)) for k, v in parts.items()},
            "parts": {k: np.asarray(v, dtype=np.int64).tolist() for k, v in parts.items()}}
    write_json_atomic(st.path / fname, body)
    manifest = read_json(st.path / MANIFEST)
    manifest.setdefault("splits", {})[name] = fname
    write_json_atomic(st.path / MANIFEST, manifest)
    return fname


def load_split(store, name: str = "default") -> dict[str, np.ndarray]:
    """Parts of a split ('train', 'val', 'test', 'train_<size>' subsets) as int64 index arrays."""
    st = open_store(store, verify=False)
    path = st.path / split_file(name)
    if not path.is_file():
        raise StoreError(f"{path}: no split named {name!r} (known: {sorted(st.manifest.get('splits', {}))})")
    body = read_json(path)
    if body["store_fingerprint"] != st.fingerprint():
        raise StoreError(f"{path} was made for another store content (fingerprint "
                         f"{body['store_fingerprint']}, "
                         f"this store {st.fingerprint()}); remake the split")
    return {k: np.asarray(v, dtype=np.int64) for k, v in body["parts"].items()}


def make_split(store, name: str = "default", fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0,
               subset_sizes: Sequence[int] = (), dedup: bool = True) -> dict[str, np.ndarray]:
    """Dedup-aware seeded split plus nested 'train_<size>' subsets, written next to the manifest."""
    st = open_store(store, verify=False)
    groups = duplicate_groups(st) if dedup else None
    parts = random_split(len(st), fractions, seed, groups)
    for size, idx in nested_subsets(parts["train"], subset_sizes, seed).items():
        parts[f"train_{size}"] = idx
    n_dup = 0 if groups is None else int(len(groups) - len(np.unique(groups)))
    info = {"fractions": list(fractions), "seed": seed, "dedup": dedup, "duplicates_grouped": n_dup,
            "subset_sizes": sorted(int(s) for s in subset_sizes)}
    write_split(st, name, parts, info)
    return parts
