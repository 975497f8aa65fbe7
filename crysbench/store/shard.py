"""One shard: crystals → flat arrays (atoms, labels, graphs) → a deterministic HDF5 file, and back.

Layout of ``shard-XXXXX.h5`` (B crystals, N atoms, E edges, T triplets, P targets)::

    ids [B] utf-8            numbers [N] int16        positions [N, 3] float64 Å   atom_ptr [B+1] int64
    cells [B, 3, 3] Å        pbc [B, 3] bool          targets [B, P] float64      mask [B, P] bool
    spacegroup [B] int16     crystal_system [B] int8  (0 / -1 where spglib found no symmetry)
    edge_ptr [B+1] int64     edge_index [E, 2] int32 local (i, j)   shifts [E, 3] int8/int16/int32
    triplet_ptr [B+1] int64  triplets [T, 2] int32 local edge ids (a, b)   (only with spec.triplets)

Edges of crystal b are ``edge_ptr[b]:edge_ptr[b+1]`` with atom ids local to the crystal; the bytes
of a shard depend only on its crystals and the spec (no timestamps), so reruns reproduce checksums.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings

import h5py
import numpy as np
import torch

from crysbench.store.manifest import SCHEMA_VERSION, GraphSpec, fsync_dir

GRAPH_CHUNK_ATOMS = 20000  # atoms per neighbour-list call: bounds memory, amortises call overhead
SYSTEM_BOUNDS = (2, 15, 74, 142, 167, 194, 230)  # last space group of each crystal system
CRYSTAL_SYSTEMS = ("triclinic", "monoclinic", "orthorhombic", "tetragonal", "trigonal", "hexagonal",
                   "cubic")


def crystal_system(spacegroup: int) -> int:
    """Crystal system 0..6 (triclinic..cubic) of a space-group number 1..230; -1 for 0 (unknown)."""
    if not 1 <= spacegroup <= 230:
        return -1
    return int(np.searchsorted(SYSTEM_BOUNDS, spacegroup))


def symmetry_labels(cell: np.ndarray, positions: np.ndarray, numbers: np.ndarray, pbc,
                    symprec: float = 0.1) -> tuple[int, int]:
    """(space group 1..230, crystal system 0..6) from spglib; (0, -1) if not 3-D periodic or no fit."""
    import spglib

    if not all(bool(p) for p in pbc):
        return 0, -1
    frac = positions @ np.linalg.inv(cell)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            data = spglib.get_symmetry_dataset((cell, frac, numbers), symprec=symprec)
        except (RuntimeError, ValueError, getattr(spglib, "SpglibError", RuntimeError)):
            data = None
    if data is None:
        return 0, -1
    number = int(data.number if hasattr(data, "number") else data["number"])
    return number, crystal_system(number)


def _crystal_fields(c, index: int) -> tuple:
    """Validated (id, numbers [n], positions [n,3], cell [3,3], pbc [3], targets) of one record."""
    cid = str(c.id)
    where = f"crystal {index} (id {cid!r})"
    numbers = np.asarray(c.numbers).reshape(-1)
    positions = np.asarray(c.positions, dtype=np.float64)
    cell = np.asarray(c.cell, dtype=np.float64)
    pbc = np.asarray(c.pbc, dtype=bool).reshape(-1)
    if numbers.size == 0 or positions.shape != (numbers.size, 3):
        raise ValueError(f"{where}: needs >= 1 atom and positions [n, 3] for its {numbers.size} atomic "
                         f"numbers, got positions {positions.shape}")
    if numbers.min() < 1 or numbers.max() > 32767 or not np.all(numbers == np.round(numbers)):
        raise ValueError(f"{where}: atomic numbers must be integers >= 1, got {numbers.tolist()[:10]}")
    if cell.shape != (3, 3) or pbc.shape != (3,):
        raise ValueError(f"{where}: cell must be [3, 3] and pbc 3 bools, got {cell.shape} and {pbc.shape}")
    if not (np.isfinite(positions).all() and np.isfinite(cell).all()):
        raise ValueError(f"{where}: positions and cell must be finite")
    return cid, numbers.astype(np.int64), positions, cell, pbc, dict(c.targets or {})


def _target_row(targets: dict, names: list[str], where: str) -> tuple[np.ndarray, np.ndarray]:
    unknown = set(targets) - set(names)
    if unknown:
        raise ValueError(f"{where} has targets {sorted(unknown)} that are not among the store's "
                         f"target_names {names}; pass target_names explicitly to write_store")
    row = np.array([float(targets.get(n, np.nan)) for n in names], dtype=np.float64)
    mask = np.isfinite(row)  # missing (absent) or non-finite → masked out, stored as 0
    return np.where(mask, row, 0.0), mask


def assemble(chunk: list, first_index: int, target_names: list[str]) -> tuple[dict, str]:
    """Flat atom / cell / target arrays of a list of crystals and the sha256 of that input."""
    ids, nums, pos, cells, pbcs, trows, masks = [], [], [], [], [], [], []
    for k, c in enumerate(chunk):
        cid, z, p, cell, pbc, targets = _crystal_fields(c, first_index + k)
        row, mask = _target_row(targets, target_names, f"crystal {first_index + k} (id {cid!r})")
        for lst, v in zip((ids, nums, pos, cells, pbcs, trows, masks), (cid, z, p, cell, pbc, row, mask),
                          strict=True):
            lst.append(v)
    P = len(target_names)
    arrays = {
        "ids": ids,
        "numbers": np.concatenate(nums).astype(np.int16),
        "positions": np.concatenate(pos),
        "atom_ptr": np.concatenate([[0], np.cumsum([len(z) for z in nums])]).astype(np.int64),
        "cells": np.stack(cells),
        "pbc": np.stack(pbcs),
        "targets": np.stack(trows) if P else np.zeros((len(ids), 0)),
        "mask": np.stack(masks) if P else np.zeros((len(ids), 0), dtype=bool),
    }
    h = hashlib.sha256("\0".join(ids).encode())
    for key in ("numbers", "positions", "atom_ptr", "cells", "pbc", "targets", "mask"):
        h.update(np.ascontiguousarray(arrays[key]).tobytes())
    h.update(json.dumps(target_names).encode())
    return arrays, h.hexdigest()


def _graph_chunk(pos, cells, pbc, ptr, spec: GraphSpec) -> dict:
    """Edges (and triplets) of a few crystals through crysbench.ops; ids global within the chunk."""
    from crysbench import ops

    t = torch.from_numpy
    ptr_t = t(ptr)
    ei, ej, sh, d, v = ops.neighbor_list(t(pos), t(cells), t(pbc), ptr_t, spec.cutoff,
                                         return_vectors=spec.triplets)
    n = pos.shape[0]
    counts = torch.bincount(ei, minlength=n)
    if spec.max_neighbors is not None:
        keep, counts = ops.knn_cap(ei, d, n, spec.max_neighbors)
        ei, ej, sh = ei[keep], ej[keep], sh[keep]
        v = v[keep] if spec.triplets else v
    out = {"ei": ei.numpy(), "ej": ej.numpy(), "shifts": sh.numpy(),
           "n_underfull": int((counts < (spec.max_neighbors or 0)).sum()),
           "n_isolated": int((torch.bincount(ei, minlength=n) == 0).sum())}
    if spec.triplets:
        ea, eb, _ = ops.triplets(ei, v, n)
        out["ea"], out["eb"] = ea.numpy(), eb.numpy()
    return out


def _localise(g: dict, ptr: np.ndarray, n_crystals: int, triplets: bool) -> dict:
    """Global chunk ids → per-crystal counts and local atom / edge ids."""
    crystal_of_atom = np.repeat(np.arange(n_crystals), np.diff(ptr))
    ce = crystal_of_atom[g["ei"]]
    out = {"edge_counts": np.bincount(ce, minlength=n_crystals),
           "edge_index": np.stack([g["ei"] - ptr[ce], g["ej"] - ptr[ce]], axis=1), "shifts": g["shifts"]}
    if triplets:
        eptr = np.concatenate([[0], np.cumsum(out["edge_counts"])])
        ct = ce[g["ea"]]
        out["triplet_counts"] = np.bincount(ct, minlength=n_crystals)
        out["triplets"] = np.stack([g["ea"] - eptr[ct], g["eb"] - eptr[ct]], axis=1)
    return out


def _chunks(atom_ptr: np.ndarray, budget: int):
    """Consecutive crystal ranges [lo, hi) of at most ``budget`` atoms (at least one crystal each)."""
    lo, B = 0, len(atom_ptr) - 1
    while lo < B:
        hi = max(lo + 1, int(np.searchsorted(atom_ptr, atom_ptr[lo] + budget, side="right")) - 1)
        yield lo, min(hi, B)
        lo = min(hi, B)


def _smallest_int(values: np.ndarray, name: str) -> np.ndarray:
    lo, hi = (int(values.min()), int(values.max())) if values.size else (0, 0)
    for dtype in (np.int8, np.int16, np.int32):
        if np.iinfo(dtype).min <= lo and hi <= np.iinfo(dtype).max:
            return values.astype(dtype)
    raise ValueError(f"{name} values in [{lo}, {hi}] do not fit int32")


def add_graphs(arrays: dict, spec: GraphSpec) -> dict:
    """Add symmetry labels and the graph of ``spec`` to assembled shard arrays (in place, returned)."""
    ptr, B = arrays["atom_ptr"], len(arrays["ids"])
    labels = [symmetry_labels(arrays["cells"][b], arrays["positions"][ptr[b]:ptr[b + 1]],
                              arrays["numbers"][ptr[b]:ptr[b + 1]], arrays["pbc"][b]) for b in range(B)]
    arrays["spacegroup"] = np.array([s for s, _ in labels], dtype=np.int16).reshape(B)
    arrays["crystal_system"] = np.array([c for _, c in labels], dtype=np.int8).reshape(B)
    parts, stats = [], {"n_underfull": 0, "n_isolated": 0}
    for lo, hi in _chunks(ptr, GRAPH_CHUNK_ATOMS):
        local_ptr = ptr[lo:hi + 1] - ptr[lo]
        g = _graph_chunk(arrays["positions"][ptr[lo]:ptr[hi]], arrays["cells"][lo:hi], arrays["pbc"][lo:hi],
                         local_ptr, spec)
        stats = {k: stats[k] + g[k] for k in stats}
        parts.append(_localise(g, local_ptr, hi - lo, spec.triplets))
    def cat(key: str) -> np.ndarray:
        return np.concatenate([p[key] for p in parts])

    arrays["edge_ptr"] = np.concatenate([[0], np.cumsum(cat("edge_counts"))]).astype(np.int64)
    arrays["edge_index"] = cat("edge_index").astype(np.int32).reshape(-1, 2)
    arrays["shifts"] = _smallest_int(cat("shifts").reshape(-1, 3), "cell shifts")
    if spec.triplets:
        arrays["triplet_ptr"] = np.concatenate([[0], np.cumsum(cat("triplet_counts"))]).astype(np.int64)
        arrays["triplets"] = cat("triplets").astype(np.int32).reshape(-1, 2)
    arrays["graph_stats"] = stats
    return arrays


DATASETS = ("numbers", "positions", "atom_ptr", "cells", "pbc", "targets", "mask", "spacegroup",
            "crystal_system", "edge_ptr", "edge_index", "shifts", "triplet_ptr", "triplets")


def write_shard(path: str, arrays: dict, spec: GraphSpec, target_names: list[str], first_index: int) -> None:
    """Write ``path + '.tmp'``, fsync it, and ``os.replace`` it onto ``path`` (never a half file)."""
    tmp = path + ".tmp"
    with h5py.File(tmp, "w", libver="earliest", track_order=False) as f:
        f.attrs["schema_version"] = SCHEMA_VERSION
        f.attrs["graph_spec"] = json.dumps(spec.to_dict(), sort_keys=True)
        f.attrs["target_names"] = json.dumps(list(target_names))
        f.attrs["first_index"] = int(first_index)
        f.create_dataset("ids", data=np.array(arrays["ids"], dtype=object),
                         dtype=h5py.string_dtype("utf-8"), track_times=False)
        for name in DATASETS:
            if name in arrays:
                f.create_dataset(name, data=arrays[name], track_times=False)
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(os.path.abspath(path)))


def read_shard(path: str, with_triplets: bool = True, with_ids: bool = True) -> dict:
    """Every dataset of a shard as numpy arrays (ids as a list of str unless ``with_ids`` is False)."""
    with h5py.File(path, "r") as f:
        wanted = [n for n in DATASETS if n in f and (with_triplets or "triplet" not in n)]
        out = {name: f[name][()] for name in wanted}
        if with_ids:
            out["ids"] = list(f["ids"].asstr()[()])
    return out
