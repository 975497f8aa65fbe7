"""Store verbs for ``python -m crysbench``: ingest, describe, split (argparse-ready functions).

``add_*_args(parser)`` fills a subparser and ``*_main(args)`` runs the verb from its namespace, so
the main CLI wires a verb with two lines. The plain functions (:func:`ingest`, :func:`describe`,
:func:`split`) are the API.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from crysbench.store.manifest import GraphSpec
from crysbench.store.reader import open_store
from crysbench.store.shard import CRYSTAL_SYSTEMS

MPI_ENV = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS", "MV2_COMM_WORLD_SIZE")


def _mpi_world():
    """(rank, size, sync) from mpi4py when launched under MPI with > 1 rank, else None."""
    if not any(v in os.environ for v in MPI_ENV):
        return None  # importing mpi4py.MPI initialises MPI: only do it under an MPI launcher
    try:
        from mpi4py import MPI
    except ImportError:
        return None
    comm = MPI.COMM_WORLD
    return (comm.Get_rank(), comm.Get_size(), _MpiSync(comm)) if comm.Get_size() > 1 else None


class _MpiSync:
    """The ranks' one meeting point, which also carries failure: a plain Barrier would leave every
    healthy rank waiting forever for a rank that raised (and mpiexec with them)."""

    def __init__(self, comm) -> None:
        self.comm, self.done = comm, False

    def __call__(self, failed: bool = False) -> None:
        self.done = True
        bad = [r for r, f in enumerate(self.comm.allgather(bool(failed))) if f]
        if bad and not failed:
            raise RuntimeError(f"ingest: MPI rank(s) {bad} failed (see their error above); rank "
                               f"{self.comm.Get_rank()} stops too, no manifest is written; rerun to resume")


def _progress(rank: int, total: int | None = None):
    """A tqdm bar on rank 0 when stderr is a terminal, else None."""
    if rank != 0 or not sys.stderr.isatty():
        return None, None
    from tqdm import tqdm

    bar = tqdm(total=total, unit="crystal", desc="ingest", file=sys.stderr)
    return bar, bar.update


def _ingest_rank(source, format: str, out: str, spec: GraphSpec, on_error: str, shard_size: int,
                 targets, rank: int, world: int, barrier, resume: bool, reader=None) -> dict | None:
    from crysbench.store.writer import write_store

    if reader is None:
        from crysbench.data.readers import read as reader  # the readers are a layer above the store
    reading = reader(source, format, targets=targets, on_error=on_error)
    sources = [source] if isinstance(source, (str, os.PathLike)) else []
    bar, update = _progress(rank)
    try:
        manifest = write_store(reading, out, spec, target_names=targets, shard_size=shard_size,
                               source_files=sources, resume=resume, rank=rank, world=world, barrier=barrier,
                               progress=update)
    except BaseException:
        if isinstance(barrier, _MpiSync) and not barrier.done:
            barrier(failed=True)  # tell the other ranks, which are waiting in the same collective
        raise
    finally:
        if bar is not None:
            bar.close()
    skipped = getattr(reading, "skipped", [])
    if skipped and rank == 0:
        print(f"ingest: skipped {len(skipped)} bad records (first: {skipped[0]})", file=sys.stderr)
    return manifest


def ingest(source, format: str, out: str | os.PathLike, graph_spec: GraphSpec | None = None,
           on_error: str = "fail", shard_size: int = 1000, targets: list[str] | None = None,
           workers: int = 1, resume: bool = True, reader=None) -> dict | None:
    """Read ``source`` with crysbench.data.readers and write a store in ``out``.

    Under MPI (mpi4py, > 1 rank) each rank writes its shards and rank 0 the manifest; otherwise
    ``workers`` > 1 spawns that many local processes doing the same. Returns the manifest (rank 0).
    ``reader(source, format, targets=, on_error=)`` replaces crysbench.data.readers.read (tests).
    """
    graph_spec = graph_spec or GraphSpec()
    mpi = _mpi_world()
    if mpi is not None:
        rank, size, sync = mpi
        return _ingest_rank(source, format, str(out), graph_spec, on_error, shard_size, targets, rank, size,
                            sync, resume, reader)
    if workers <= 1:
        return _ingest_rank(source, format, str(out), graph_spec, on_error, shard_size, targets, 0, 1, None,
                            resume, reader)
    return _ingest_processes(source, format, str(out), graph_spec, on_error, shard_size, targets, workers,
                             resume, reader)


def _ingest_processes(source, format, out, spec, on_error, shard_size, targets, workers, resume, reader):
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(workers)
    procs = [ctx.Process(target=_ingest_rank, args=(source, format, out, spec, on_error, shard_size, targets,
                                                    r, workers, barrier.wait, resume, reader))
             for r in range(workers)]
    for p in procs:
        p.start()
    _join_aborting(procs, barrier)
    failed = [r for r, p in enumerate(procs) if p.exitcode != 0]
    if failed:
        raise RuntimeError(f"ingest: worker ranks {failed} failed (exit codes "
                           f"{[procs[r].exitcode for r in failed]}); rerun to resume")
    return json.loads((Path(out) / "manifest.json").read_text())


def _join_aborting(procs, barrier) -> None:
    """Join the workers; when one dies, break the barrier so the others stop instead of waiting forever."""
    from multiprocessing.connection import wait

    running = {p.sentinel: p for p in procs}
    while running:
        for sentinel in wait(list(running)):
            p = running.pop(sentinel)
            p.join()
            if p.exitcode != 0:
                barrier.abort()  # the waiting ranks get BrokenBarrierError and exit non-zero


# ---------------------------------------------------------------------------------------------
# describe
# ---------------------------------------------------------------------------------------------
def _distribution(values: np.ndarray) -> dict:
    if values.size == 0:
        return {"count": 0}
    q = np.percentile(values, [0, 5, 25, 50, 75, 95, 100])
    return {"count": int(values.size), "mean": float(values.mean()), "std": float(values.std()),
            **dict(zip(("min", "p5", "p25", "median", "p75", "p95", "max"), q.tolist(), strict=True))}


def describe(store, png: str | os.PathLike | None = None) -> dict:
    """Counts, per-target distributions, crystal-system and space-group histograms of a store.

    With ``png``, also draws standardized-target violins and the histograms there (matplotlib Agg).
    """
    st = open_store(store, verify=False)
    targets, mask = st.column("targets"), st.column("mask")
    spg, system = st.column("spacegroup"), st.column("crystal_system")
    atoms, edges = st.sizes()
    m = st.manifest
    out = {
        "path": str(st.path), "n_crystals": len(st), "n_atoms": m["n_atoms"], "n_edges": m["n_edges"],
        "n_triplets": m["n_triplets"], "n_shards": len(m["shards"]), "graph_spec": m["graph_spec"],
        "atoms_per_crystal": _distribution(atoms), "edges_per_atom": _distribution(edges / atoms),
        "targets": {n: _distribution(targets[mask[:, p], p]) for p, n in enumerate(st.target_names)},
        "crystal_systems": {(CRYSTAL_SYSTEMS[s] if s >= 0 else "unknown"): int(c)
                            for s, c in sorted(Counter(system.tolist()).items())},
        "spacegroups": {int(s): int(c) for s, c in sorted(Counter(spg.tolist()).items())},
    }
    if png is not None:
        _plot(out, targets, mask, st.target_names, spg, Path(png))
    return out


def _plot(desc: dict, targets: np.ndarray, mask: np.ndarray, names: list[str], spg: np.ndarray,
          png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    data = [(targets[mask[:, p], p] - targets[mask[:, p], p].mean()) / (targets[mask[:, p], p].std() or 1.0)
            for p in range(len(names))]
    kept = [(n, d) for n, d in zip(names, data, strict=True) if d.size > 1]
    if kept:
        axes[0].violinplot([d for _, d in kept], showmedians=True)
        axes[0].set_xticks(range(1, len(kept) + 1), [n for n, _ in kept], rotation=30)
    axes[0].set(title="standardized targets", ylabel="z-score")
    systems = desc["crystal_systems"]
    axes[1].bar(list(systems), list(systems.values()))
    axes[1].tick_params(axis="x", rotation=30)
    axes[1].set(title="crystal systems", ylabel="crystals")
    axes[2].hist(spg[spg > 0], bins=np.arange(0.5, 231.5, 1.0))
    axes[2].set(title="space groups", xlabel="space-group number", ylabel="crystals")
    fig.suptitle(f"{desc['path']}: {desc['n_crystals']} crystals")
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# argparse wiring
# ---------------------------------------------------------------------------------------------
def add_ingest_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="file or folder to read")
    p.add_argument("--format", required=True, help="reader format (see crysbench.data.readers)")
    p.add_argument("--out", required=True, help="store folder to write")
    p.add_argument("--cutoff", type=float, default=8.0, help="neighbour cutoff in Å (default 8)")
    p.add_argument("--max-neighbors", type=int, default=12, help="k-nearest cap per atom; 0 keeps all")
    p.add_argument("--triplets", action="store_true", help="also store the line graph (ALIGNN)")
    p.add_argument("--targets", nargs="*", default=None, help="target names to keep (default all)")
    p.add_argument("--on-error", choices=("fail", "skip"), default="fail")
    p.add_argument("--shard-size", type=int, default=1000, help="crystals per shard (default 1000)")
    p.add_argument("--workers", type=int, default=1, help="local processes when not under MPI")
    p.add_argument("--no-resume", action="store_true", help="rewrite every shard")


def ingest_main(args: argparse.Namespace) -> int:
    spec = GraphSpec(args.cutoff, args.max_neighbors or None, args.triplets)
    m = ingest(args.source, args.format, args.out, spec, args.on_error, args.shard_size, args.targets,
               args.workers, not args.no_resume)
    if m is not None:
        print(f"wrote {m['n_crystals']} crystals in {len(m['shards'])} shards to {args.out}")
    return 0


def add_describe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("store", help="store folder")
    p.add_argument("--png", default=None, help="write target violins and histograms here")


def describe_main(args: argparse.Namespace) -> int:
    print(json.dumps(describe(args.store, args.png), indent=1))
    return 0


def add_split_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("store", help="store folder")
    p.add_argument("--name", default="default")
    p.add_argument("--fractions", type=float, nargs=3, default=(0.8, 0.1, 0.1),
                   metavar=("TRAIN", "VAL", "TEST"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--subsets", type=int, nargs="*", default=[], help="nested training subset sizes")
    p.add_argument("--no-dedup", action="store_true", help="skip StructureMatcher duplicate grouping")


def split_main(args: argparse.Namespace) -> int:
    from crysbench.store.splits import make_split

    parts = make_split(args.store, args.name, args.fractions, args.seed, args.subsets, not args.no_dedup)
    print(json.dumps({k: len(v) for k, v in parts.items()}))
    return 0
