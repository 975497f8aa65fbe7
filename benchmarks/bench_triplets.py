"""Line graph (ALIGNN triplets) benchmark: native CPU kernel vs the vectorized torch a user would write.

Input: the 12-nearest-neighbour graph (cutoff 8 Å, ties at the 12th distance kept) of
``crysbench.synthetic.random_batch(1000)``. Correctness is checked before anything is timed.

    python -m pytest benchmarks/bench_triplets.py --benchmark-json=out.json
    CRYSBENCH_BENCH_QUICK=1 python -m pytest benchmarks/bench_triplets.py   # small smoke run
"""

from __future__ import annotations

import functools
import os
import subprocess

import numpy as np
import pytest
import torch
from torch import Tensor

import crysbench.ops as ops
from crysbench.ops import reference
from crysbench.synthetic import random_batch

QUICK = os.environ.get("CRYSBENCH_BENCH_QUICK", "0") == "1"
N_CRYSTALS = 50 if QUICK else 1000
CUTOFF = 8.0  # Å
K = 12
ROUNDS = 2 if QUICK else 5
TOL = {torch.float32: 2e-6, torch.float64: 1e-12}


# --------------------------------------------------------------------------------------------
# the peer: vectorized torch, no python loop over atoms
# --------------------------------------------------------------------------------------------
def triplets_torch(edge_i: Tensor, vectors: Tensor, num_atoms: int):
    """All ordered pairs (a, b), a != b, of edges sharing a centre, from CSR degree arithmetic.

    Edge a of a centre with degree d pairs with the d - 1 other edges of that centre; the b-th
    partner skips a itself. Same order and outputs as ``reference.triplets``.
    """
    deg = torch.bincount(edge_i, minlength=num_atoms)
    first = torch.cumsum(deg, 0) - deg  # first edge of each centre
    partners = (deg - 1)[edge_i]  # per edge a
    n_triplets = int(partners.sum())
    edge_a = torch.repeat_interleave(torch.arange(edge_i.numel()), partners, output_size=n_triplets)
    block = torch.cumsum(partners, 0) - partners  # where edge a's partners start in the output
    local = torch.arange(n_triplets) - block[edge_a]
    centre_first = first[edge_i[edge_a]]
    local += (local >= edge_a - centre_first).long()  # skip the pair (a, a)
    edge_b = centre_first + local
    unit = vectors / vectors.norm(dim=1, keepdim=True)
    cos = (unit[edge_a] * unit[edge_b]).sum(1).clamp(-1.0, 1.0)
    return edge_a, edge_b, cos


# --------------------------------------------------------------------------------------------
# the input graph
# --------------------------------------------------------------------------------------------
def _has_native(op: str) -> bool:
    try:
        ops.build_info()
    except ops.NativeBuildError:
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"crysbench::{op}", "CPU")


def _vesin_full_list(positions: Tensor, cells: Tensor, ptr: Tensor, cutoff: float):
    """Full periodic list per crystal with vesin, sorted by (i, j): edge_i, distances, vectors."""
    from vesin import NeighborList

    nl = NeighborList(cutoff=cutoff, full_list=True)
    parts = []
    for b in range(cells.shape[0]):
        lo, hi = int(ptr[b]), int(ptr[b + 1])
        i, j, d, vec = nl.compute(positions[lo:hi].numpy(), cells[b].numpy(), True, quantities="ijdD")
        order = np.lexsort((j, i))
        parts.append((i[order] + lo, d[order], vec[order]))
    edge_i, dist, vec = (np.concatenate(x) for x in zip(*parts, strict=True))
    return torch.from_numpy(edge_i.astype(np.int64)), torch.from_numpy(dist), torch.from_numpy(vec)


def _knn_keep(edge_i: Tensor, dist: Tensor, num_atoms: int, k: int, tol: float = 1e-8) -> Tensor:
    """Vectorized k-nearest cap with ties kept (reference.knn_cap semantics): kept edge indices."""
    order = torch.argsort(dist, stable=True)
    order = order[torch.argsort(edge_i[order], stable=True)]  # by centre, then distance
    deg = torch.bincount(edge_i, minlength=num_atoms)
    first = torch.cumsum(deg, 0) - deg
    kth = torch.full((num_atoms,), float("inf"), dtype=dist.dtype)
    full = deg >= k
    kth[full] = dist[order[first[full] + k - 1]]
    return (dist <= kth[edge_i] + tol).nonzero(as_tuple=True)[0]


@functools.lru_cache(maxsize=1)
def knn_graph(n_crystals: int, cutoff: float, k: int):
    """edge_i (sorted), vectors [E, 3] float64 Å, num_atoms, and which code built the graph."""
    positions, cells, pbc, ptr = random_batch(n_crystals)
    num_atoms = positions.shape[0]
    if _has_native("neighbor_list") and _has_native("knn_cap"):
        edge_i, _, _, dist, vec = ops.neighbor_list(positions, cells, pbc, ptr, cutoff)
        keep, _ = ops.knn_cap(edge_i, dist, num_atoms, k)
        source = "crysbench.neighbor_list+knn_cap"
    else:
        edge_i, dist, vec = _vesin_full_list(positions, cells, ptr, cutoff)
        keep = _knn_keep(edge_i, dist, num_atoms, k)
        source = "vesin+torch_knn"
    return edge_i[keep].contiguous(), vec[keep].contiguous(), num_atoms, source


# --------------------------------------------------------------------------------------------
# checks and metadata
# --------------------------------------------------------------------------------------------
def _check(case: str, got, want, dtype) -> None:
    for name, g, w in zip(("edge_a", "edge_b"), got[:2], want[:2], strict=True):
        assert torch.equal(g, w), f"{case}: {name} differs ({g.numel()} vs {w.numel()} triplets)"
    diff = (got[2] - want[2]).abs().max().item() if got[2].numel() else 0.0
    assert diff <= TOL[dtype], f"{case} [{dtype}]: max |cos diff| = {diff:.3g} > tol {TOL[dtype]:.1g}"


def _head(edge_i: Tensor, vectors: Tensor, n_atoms: int):
    """The subgraph of the first ``n_atoms`` centres (small enough for the python reference)."""
    n = int(torch.searchsorted(edge_i, torch.tensor(n_atoms)))
    return edge_i[:n], vectors[:n], n_atoms


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


@pytest.fixture(scope="module", params=[torch.float32, torch.float64], ids=["float32", "float64"])
def graph(request):
    if not _has_native("triplets"):
        pytest.skip("native crysbench.triplets is not built (python setup.py build_ext --inplace)")
    dtype = request.param
    edge_i, vectors, num_atoms, source = knn_graph(N_CRYSTALS, CUTOFF, K)
    vectors = vectors.to(dtype)
    native = torch.ops.crysbench.triplets(edge_i, vectors, num_atoms)
    _check("native vs reference (first 300 centres)", ops.triplets(*_head(edge_i, vectors, 300)),
           reference.triplets(*_head(edge_i, vectors, 300)), dtype)
    peer = triplets_torch(edge_i, vectors, num_atoms)
    _check("native vs vectorized torch (full graph)", native, peer, dtype)
    info = {
        "op": "triplets", "n_crystals": N_CRYSTALS, "cutoff_A": CUTOFF, "k": K, "graph": source,
        "n_atoms": num_atoms, "n_edges": int(edge_i.numel()), "n_triplets": int(native[0].numel()),
        "dtype": str(dtype), "device": "cpu", "threads": torch.get_num_threads(),
        "torch": torch.__version__, "cuda": torch.version.cuda, "git_commit": _git_commit(),
    }
    return edge_i, vectors, num_atoms, info


def _run(benchmark, fn, graph, impl: str) -> None:
    edge_i, vectors, num_atoms, info = graph
    benchmark.group = f"triplets-{info['dtype']}"
    benchmark.extra_info.update(info, impl=impl)
    benchmark.pedantic(fn, args=(edge_i, vectors, num_atoms), rounds=ROUNDS, warmup_rounds=1)


def test_triplets_native(benchmark, graph) -> None:
    _run(benchmark, torch.ops.crysbench.triplets, graph, "crysbench-native")


def test_triplets_torch_vectorized(benchmark, graph) -> None:
    _run(benchmark, triplets_torch, graph, "torch-vectorized")
