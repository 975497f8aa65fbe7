"""Interleaved peer / crysbench ratios, for a loaded machine where pytest-benchmark's back-to-back
groups drift: each repetition times crysbench and then the peer, and the ratio reported is the median
of the per-repetition ratios (peer / crysbench; above 1 means crysbench is faster).

    python benchmarks/interleaved.py scatter [--reduce sum,mean,max] [--reps 5]   # 2 threads
    python benchmarks/interleaved.py neighbor [--reps 7]                            # 1 thread, vs pymatgen
    python benchmarks/interleaved.py neighbor-fcc [--reps 5]                        # 1 thread, vs vesin
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

import crysbench.ops as ops

E, N, F = 1_000_000, 100_000, 128
TORCH_REDUCE = {"sum": "sum", "mean": "mean", "max": "amax"}


def _torch_scatter(src, index, reduce):
    """The peer exactly as benchmarks/bench_segment.py calls it."""
    if reduce == "sum":
        return torch.zeros(N, F, dtype=src.dtype).index_add_(0, index, src)
    idx = index.view(-1, 1).expand_as(src)
    out = torch.zeros(N, F, dtype=src.dtype)
    return out.scatter_reduce_(0, idx, src, TORCH_REDUCE[reduce], include_self=False)


def _interleave(ours, peer, reps: int) -> tuple[float, float, float]:
    """(median ms ours, median ms peer, median of peer/ours per repetition)."""
    t_ours, t_peer = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        ours()
        t1 = time.perf_counter()
        peer()
        t2 = time.perf_counter()
        t_ours.append(t1 - t0)
        t_peer.append(t2 - t1)
    ratio = statistics.median(p / o for p, o in zip(t_peer, t_ours, strict=True))
    return statistics.median(t_ours) * 1e3, statistics.median(t_peer) * 1e3, ratio


def scatter(reductions: list[str], reps: int) -> None:
    torch.set_num_threads(2)
    gen = torch.Generator().manual_seed(0)
    index = torch.randint(0, N, (E,), generator=gen)
    src = torch.randn(E, F, generator=gen)
    for reduce in reductions:
        for layout, idx in (("unsorted", index), ("sorted", index.sort().values)):
            want = _torch_scatter(src, idx, reduce)
            diff = (ops.scatter(src, idx, N, reduce) - want).abs().max().item()
            assert diff <= 1e-4 * max(1.0, want.abs().max().item()), f"{reduce}/{layout} differs by {diff}"
            ours, peer, ratio = _interleave(
                lambda i=idx, r=reduce: ops.scatter(src, i, N, r),
                lambda i=idx, r=reduce: _torch_scatter(src, i, r),
                reps,
            )
            print(
                f"scatter {reduce:4s} {layout:8s} crysbench {ours:7.1f} ms  torch {peer:7.1f} ms  "
                f"ratio {ratio:.2f}",
                flush=True,
            )


def neighbor(reps: int) -> None:
    from pymatgen.optimization.neighbors import find_points_in_spheres

    from crysbench.synthetic import random_batch

    torch.set_num_threads(1)
    pos, cells, pbc, ptr = random_batch(1000)
    pn, cn, bounds = pos.numpy(), cells.numpy(), ptr.tolist()

    def pymatgen(cutoff: float) -> int:
        pairs = 0
        for b in range(len(cn)):
            p = np.ascontiguousarray(pn[bounds[b] : bounds[b + 1]])
            i, j, _, d = find_points_in_spheres(
                p, p, r=cutoff, pbc=np.ones(3, dtype=np.int64), lattice=np.ascontiguousarray(cn[b]), tol=1e-8
            )
            pairs += int(np.count_nonzero(~((i == j) & (d < 1e-8))))  # drop (i, i, 0)
        return pairs

    for cutoff in (5.0, 8.0):
        ours_pairs = ops.neighbor_list(pos, cells, pbc, ptr, cutoff, False)[0].numel()
        assert ours_pairs == pymatgen(cutoff), f"pair counts differ at {cutoff} Å"
        ours, peer, ratio = _interleave(
            lambda c=cutoff: ops.neighbor_list(pos, cells, pbc, ptr, c, False),
            lambda c=cutoff: pymatgen(c),
            reps,
        )
        print(
            f"neighbor_list {cutoff:.0f} A ({ours_pairs} pairs) crysbench {ours:7.1f} ms  "
            f"pymatgen {peer:7.1f} ms  ratio {ratio:.2f}",
            flush=True,
        )


def neighbor_fcc(reps: int) -> None:
    """The large-cell case: fcc_supercell(29) (97,556 atoms) at 8 Å, against vesin's cell list."""
    from vesin import NeighborList

    from crysbench.synthetic import fcc_supercell

    torch.set_num_threads(1)
    pos, cells, pbc, ptr = fcc_supercell(29)
    pn, cn = pos.numpy(), cells[0].numpy()

    def vesin() -> int:
        nl = NeighborList(cutoff=8.0, full_list=True, n_threads=1)
        return len(nl.compute(points=pn, box=cn, periodic=True, quantities="ijSd")[0])

    ours_pairs = ops.neighbor_list(pos, cells, pbc, ptr, 8.0, False)[0].numel()
    assert ours_pairs == vesin(), "pair counts differ"
    ours, peer, ratio = _interleave(lambda: ops.neighbor_list(pos, cells, pbc, ptr, 8.0, False), vesin, reps)
    print(
        f"neighbor_list fcc29 8 A ({ours_pairs} pairs) crysbench {ours:7.1f} ms  vesin {peer:7.1f} ms  "
        f"ratio {ratio:.2f}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("scatter", "neighbor", "neighbor-fcc"))
    parser.add_argument("--reduce", default="sum,mean,max")
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    if args.what == "scatter":
        scatter(args.reduce.split(","), args.reps)
    elif args.what == "neighbor":
        neighbor(args.reps)
    else:
        neighbor_fcc(args.reps)


if __name__ == "__main__":
    main()
