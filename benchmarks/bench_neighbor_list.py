"""Periodic neighbour list benchmark: crysbench's native CPU kernel vs vesin, pymatgen, matscipy, ASE.

Inputs (float64, all axes periodic, full list i -> j with shifts and distances, "ijSd"):
  * ``random_batch(1000)``: 1,000 random triclinic crystals of 8-64 atoms, at 5 Å and 8 Å;
    the peers take one crystal at a time, as a user would call them;
  * ``fcc_supercell(14)`` (~1.1e4 atoms) and ``fcc_supercell(29)`` (~9.8e4 atoms) at 8 Å.
The native op runs with 1 thread and with 2 threads (torch.set_num_threads); peers run on 1 thread
where they have the switch (vesin's n_threads). Before timing, every peer's pair count is checked
against the native one (pymatgen also returns each atom paired with itself at distance 0; those
pairs are dropped before counting).

    python -m pytest benchmarks/bench_neighbor_list.py --benchmark-only
    CRYSBENCH_BENCH_QUICK=1 python -m pytest benchmarks/bench_neighbor_list.py --benchmark-only  # smoke
"""

from __future__ import annotations

import functools
import os
import subprocess
from collections.abc import Callable

import numpy as np
import pytest
import torch

import crysbench.ops as ops
from crysbench.synthetic import fcc_supercell, random_batch

QUICK = os.environ.get("CRYSBENCH_BENCH_QUICK", "0") == "1"
ROUNDS = 1 if QUICK else 5
# name -> (builder, cutoff Å, whether ASE is fast enough to include)
INPUTS = {
    "batch1000-5A": (lambda: random_batch(20 if QUICK else 1000), 5.0, True),
    "batch1000-8A": (lambda: random_batch(20 if QUICK else 1000), 8.0, False),
    "fcc14-8A": (lambda: fcc_supercell(4 if QUICK else 14), 8.0, True),
    "fcc29-8A": (lambda: fcc_supercell(6 if QUICK else 29), 8.0, False),
}


@functools.cache
def system(name: str):
    """(positions [N, 3], cells [B, 3, 3], pbc [B, 3], ptr [B + 1]) as torch and numpy, cached."""
    pos, cells, pbc, ptr = INPUTS[name][0]()
    return (pos, cells, pbc, ptr), (pos.numpy(), cells.numpy(), pbc.numpy(), ptr.tolist())


# --------------------------------------------------------------------------------------------
# peers: each returns the number of pairs (i, j, S) with i -> j, (i, i, 0) excluded
# --------------------------------------------------------------------------------------------
def _per_crystal(one: Callable[[np.ndarray, np.ndarray, np.ndarray, float], int]):
    def run(pos, cells, pbc, ptr, cutoff):
        return sum(one(np.ascontiguousarray(pos[ptr[b]:ptr[b + 1]]), np.ascontiguousarray(cells[b]), pbc[b],
                       cutoff) for b in range(len(cells)))
    return run


def _vesin(pos, cell, pbc, cutoff):
    from vesin import NeighborList

    try:
        nl = NeighborList(cutoff=cutoff, full_list=True, n_threads=1)
    except TypeError:  # vesin < 0.6 has no thread switch
        nl = NeighborList(cutoff=cutoff, full_list=True)
    i, _, _, _ = nl.compute(points=pos, box=cell, periodic=bool(pbc.all()), quantities="ijSd")
    return len(i)


def _pymatgen(pos, cell, pbc, cutoff):
    from pymatgen.optimization.neighbors import find_points_in_spheres

    i, j, _, d = find_points_in_spheres(pos, pos, r=cutoff, pbc=pbc.astype(np.int64), lattice=cell, tol=1e-8)
    return int(np.count_nonzero(~((i == j) & (d < 1e-8))))


def _matscipy(pos, cell, pbc, cutoff):
    from matscipy.neighbours import neighbour_list

    i, _, _, _ = neighbour_list("ijSd", positions=pos, cell=cell, pbc=pbc, cutoff=cutoff)
    return len(i)


def _ase(pos, cell, pbc, cutoff):
    from ase import Atoms
    from ase.neighborlist import neighbor_list

    i, _, _, _ = neighbor_list("ijSd", Atoms(positions=pos, cell=cell, pbc=pbc), cutoff)
    return len(i)


PEERS = {"vesin": _vesin, "pymatgen": _pymatgen, "matscipy": _matscipy, "ase": _ase}
MODULES = {"vesin": "vesin", "pymatgen": "pymatgen.optimization.neighbors", "matscipy": "matscipy.neighbours",
           "ase": "ase.neighborlist"}


def _native(pos, cells, pbc, ptr, cutoff):
    return ops.neighbor_list(pos, cells, pbc, ptr, cutoff, False)


# --------------------------------------------------------------------------------------------
# provenance for extra_info
# --------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _environment() -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=os.path.dirname(__file__), check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {"torch": torch.__version__, "cuda": torch.version.cuda or "none", "git_commit": commit,
            "device": "cpu", "quick": QUICK}


def _info(benchmark, name: str, peer: str, threads: int, n_pairs: int) -> None:
    (pos, cells, _, _), _ = system(name)
    benchmark.group = f"neighbor_list {name}"
    benchmark.extra_info.update(_environment())
    benchmark.extra_info.update({"input": name, "peer": peer, "n_atoms": pos.shape[0],
                                 "n_crystals": cells.shape[0], "cutoff_A": INPUTS[name][1],
                                 "dtype": str(pos.dtype), "n_pairs": n_pairs, "threads": threads})


@functools.cache
def native_pairs(name: str) -> int:
    (pos, cells, pbc, ptr), _ = system(name)
    return int(_native(pos, cells, pbc, ptr, INPUTS[name][1])[0].numel())


# --------------------------------------------------------------------------------------------
# benchmarks
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("name", list(INPUTS))
def test_native(benchmark, name, threads):
    try:
        ops.build_info()
    except ops.NativeBuildError as exc:
        pytest.skip(str(exc))
    (pos, cells, pbc, ptr), _ = system(name)
    cutoff = INPUTS[name][1]
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = benchmark.pedantic(_native, args=(pos, cells, pbc, ptr, cutoff), rounds=ROUNDS, warmup_rounds=1)
    finally:
        torch.set_num_threads(before)
    assert bool((out[0].diff() >= 0).all())
    _info(benchmark, name, "crysbench", threads, int(out[0].numel()))


@pytest.mark.parametrize("peer", list(PEERS))
@pytest.mark.parametrize("name", list(INPUTS))
def test_peer(benchmark, name, peer):
    pytest.importorskip(MODULES[peer])
    if peer == "ase" and not INPUTS[name][2]:
        pytest.skip("ASE is only timed on the small and medium inputs (it takes minutes on the others)")
    _, (pos, cells, pbc, ptr) = system(name)
    cutoff = INPUTS[name][1]
    run = _per_crystal(PEERS[peer])
    n_pairs = run(pos, cells, pbc, ptr, cutoff)
    assert n_pairs == native_pairs(name), f"{peer} on {name}: {n_pairs} pairs, native {native_pairs(name)}"
    rounds = 1 if peer == "ase" else ROUNDS
    benchmark.pedantic(run, args=(pos, cells, pbc, ptr, cutoff), rounds=rounds, warmup_rounds=0)
    _info(benchmark, name, peer, 1, n_pairs)
