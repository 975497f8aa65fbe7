"""Store format constants, the graph spec, hashing and atomic JSON files, and the manifest.

A store is a folder::

    manifest.json                 schema version, graph spec, targets + stats, shards, sources
    shard-00000.h5                crystals 0 .. shard_size-1 (HDF5, deterministic bytes)
    shard-00000.h5.meta.json      the shard's sidecar: checksum, counts, input hash (for resume)
    split-<name>.json             splits written by :mod:`crysbench.store.splits`

The manifest is written last (temp file + ``os.replace``), so a folder without one is an
unfinished ingest and :func:`crysbench.store.open_store` refuses it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
SHARD_PATTERN = "shard-{:05d}.h5"
SIDECAR_SUFFIX = ".meta.json"


class StoreError(RuntimeError):
    """A store is missing, unfinished, corrupted or of another schema version."""


@dataclass(frozen=True)
class GraphSpec:
    """How the stored graphs were built.

    cutoff: neighbour radius in Å (pairs strictly closer are edges, every periodic image counts);
    max_neighbors: k-nearest cap per atom keeping ties with the k-th (None keeps all edges);
    triplets: also store the line graph (ordered edge pairs sharing a centre atom).
    """

    cutoff: float = 8.0
    max_neighbors: int | None = 12
    triplets: bool = False

    def __post_init__(self) -> None:
        if not (math.isfinite(self.cutoff) and self.cutoff > 0):
            raise ValueError(f"GraphSpec.cutoff must be a finite number > 0 Å, got {self.cutoff!r}")
        if self.max_neighbors is not None and self.max_neighbors < 1:
            raise ValueError(f"GraphSpec.max_neighbors must be >= 1 or None, got {self.max_neighbors!r}")

    def to_dict(self) -> dict:
        return {"cutoff": float(self.cutoff), "max_neighbors": self.max_neighbors,
                "triplets": bool(self.triplets)}

    @classmethod
    def from_dict(cls, d: dict) -> GraphSpec:
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"GraphSpec: unknown keys {sorted(unknown)}")
        return cls(**d)


def shard_name(index: int) -> str:
    return SHARD_PATTERN.format(index)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file's bytes (read in 4 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_source(path: str | os.PathLike) -> str:
    """sha256 of a source file, or of a folder: a hash over its files' relative paths and hashes."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    if not path.is_dir():
        raise FileNotFoundError(f"source {path} does not exist")
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f"{f.relative_to(path).as_posix()}\0{sha256_file(f)}\n".encode())
    return h.hexdigest()


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename inside ``path`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    """Write JSON to ``path.tmp``, fsync it, then ``os.replace`` it onto ``path``."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, sort_keys=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def read_json(path: str | os.PathLike) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


# ---------------------------------------------------------------------------------------------
# per-target running statistics (count, mean, M2), merged across shards with Chan's formula
# ---------------------------------------------------------------------------------------------
def merge_stats(a: list[float], b: list[float]) -> list[float]:
    """Merge two (count, mean, M2) triples."""
    na, ma, sa = a
    nb, mb, sb = b
    n = na + nb
    if n == 0:
        return [0, 0.0, 0.0]
    delta = mb - ma
    return [n, ma + delta * nb / n, sa + sb + delta * delta * na * nb / n]


def finish_stats(triple: list[float]) -> dict:
    """(count, mean, M2) → {count, mean, std} (population std; 0 when count < 2)."""
    n, mean, m2 = triple
    std = math.sqrt(m2 / n) if n > 1 else 0.0
    return {"count": int(n), "mean": float(mean), "std": float(std)}


def build_manifest(spec: GraphSpec, target_names: list[str], shard_size: int, sidecars: list[dict],
                   sources: list[dict]) -> dict:
    """The manifest dict from the shards' sidecars (in shard order) and the source records."""
    from crysbench import __version__

    stats = {name: [0, 0.0, 0.0] for name in target_names}
    for meta in sidecars:
        for name in target_names:
            stats[name] = merge_stats(stats[name], meta["target_stats"][name])
    shard_keys = ("file", "sha256", "bytes", "n_crystals", "n_atoms", "n_edges", "n_triplets",
                  "shifts_dtype")
    return {
        "schema_version": SCHEMA_VERSION,
        "crysbench_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "graph_spec": spec.to_dict(),
        "shard_size": shard_size,
        "n_crystals": sum(m["n_crystals"] for m in sidecars),
        "n_atoms": sum(m["n_atoms"] for m in sidecars),
        "n_edges": sum(m["n_edges"] for m in sidecars),
        "n_triplets": sum(m["n_triplets"] for m in sidecars),
        "targets": {"names": list(target_names),
                    "stats": {name: finish_stats(stats[name]) for name in target_names}},
        "shards": [{k: m[k] for k in shard_keys} for m in sidecars],
        "sources": sources,
        "splits": {},
    }
