"""The built-in dataset as a graph store: ingested once from the shipped records into a cache.

The cache folder is keyed by the shipped MANIFEST's checksum and the graph spec, so a new dataset
release or another spec gets its own store; the write is atomic per shard (see crysbench.store).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np

from crysbench.store import GraphSpec

DEFAULT_SPEC = GraphSpec(cutoff=8.0, max_neighbors=12, triplets=False)


@dataclasses.dataclass(frozen=True)
class _Record:
    id: str
    cell: np.ndarray
    positions: np.ndarray
    numbers: np.ndarray
    pbc: tuple
    targets: dict


def records(name: str = "labelled"):
    """Shipped records of one set as Crystal-like objects (cell, positions, numbers, pbc, targets)."""
    from crysbench.datasets import iter_builtin

    for r in iter_builtin(name):
        yield _Record(r["id"], np.asarray(r["cell"], dtype=np.float64), np.asarray(r["positions"], dtype=np.float64),
                      np.asarray(r["numbers"], dtype=np.int64), tuple(r["pbc"]), dict(r["targets"]))


def builtin_store(cache: Path, name: str = "labelled", spec: GraphSpec = DEFAULT_SPEC) -> Path:
    """Path of the store of built-in set ``name``, ingesting it into ``cache`` on first use."""
    from crysbench.datasets import manifest
    from crysbench.store import write_store

    key = hashlib.sha256(json.dumps([manifest()["sets"][name], dataclasses.asdict(spec)],
                                    sort_keys=True).encode()).hexdigest()[:12]
    path = Path(cache) / "stores" / f"builtin-{name}-{key}"
    if not (path / "manifest.json").exists():
        print(f"ingesting the built-in {name!r} set into {path} (once)", flush=True)
        write_store(records(name), path, spec, shard_size=1000)
    return path
