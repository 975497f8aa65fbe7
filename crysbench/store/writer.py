"""Ingest: stream crystals into fixed-size shards (resumable, multi-rank), then write the manifest.

Crystal k belongs to shard ``k // shard_size``; rank r of W writes the shards s with ``s % W == r``.
Each finished shard gets a sidecar (checksum, counts, a hash of its input crystals and settings), so a
rerun skips every shard whose file still matches its sidecar and whose input is unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from pathlib import Path

from crysbench.store import shard as shard_mod
from crysbench.store.manifest import (
    MANIFEST,
    SCHEMA_VERSION,
    SIDECAR_SUFFIX,
    GraphSpec,
    StoreError,
    build_manifest,
    read_json,
    sha256_file,
    sha256_source,
    shard_name,
    write_json_atomic,
)


def _settings_hash(spec: GraphSpec, target_names: list[str], shard_size: int) -> str:
    blob = json.dumps([SCHEMA_VERSION, spec.to_dict(), list(target_names), shard_size], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _target_stats(arrays: dict, names: list[str]) -> dict:
    """Per-target (count, mean, M2) of the present values of a shard."""
    out = {}
    for p, name in enumerate(names):
        vals = arrays["targets"][arrays["mask"][:, p], p]
        mean = float(vals.mean()) if vals.size else 0.0
        out[name] = [int(vals.size), mean, float(((vals - mean) ** 2).sum())]
    return out


def _is_complete(out: Path, index: int, input_sha: str, settings: str) -> dict | None:
    """The sidecar of shard ``index`` if the shard is published, unchanged and verifies; else None."""
    path = out / shard_name(index)
    side = Path(str(path) + SIDECAR_SUFFIX)
    if not (path.is_file() and side.is_file()):
        return None
    try:
        meta = read_json(side)
    except (OSError, ValueError):
        return None
    if meta.get("input_sha256") != input_sha or meta.get("settings_sha256") != settings:
        return None
    if meta.get("bytes") != path.stat().st_size or meta.get("sha256") != sha256_file(path):
        return None
    return meta


def _write_one(out: Path, index: int, arrays: dict, input_sha: str, settings: str, spec: GraphSpec,
               names: list[str], first_index: int) -> dict:
    """Build graphs, publish the shard, then its sidecar (a shard without sidecar counts as unfinished)."""
    shard_mod.add_graphs(arrays, spec)
    path = out / shard_name(index)
    shard_mod.write_shard(str(path), arrays, spec, names, first_index)
    meta = {
        "file": path.name, "sha256": sha256_file(path), "bytes": path.stat().st_size,
        "n_crystals": len(arrays["ids"]), "n_atoms": int(arrays["atom_ptr"][-1]),
        "n_edges": int(arrays["edge_ptr"][-1]),
        "n_triplets": int(arrays["triplet_ptr"][-1]) if spec.triplets else 0,
        "shifts_dtype": str(arrays["shifts"].dtype), "first_index": first_index,
        "input_sha256": input_sha, "settings_sha256": settings,
        "target_stats": _target_stats(arrays, names), **arrays["graph_stats"],
    }
    write_json_atomic(str(path) + SIDECAR_SUFFIX, meta)
    return meta


def _chunked(items: Iterable, size: int) -> Iterator[list]:
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk


def _infer_targets(first: list) -> list[str]:
    return sorted({k for c in first for k in (c.targets or {})})


def write_store(crystals: Iterable, out_dir: str | os.PathLike, graph_spec: GraphSpec | None = None,
                target_names: list[str] | None = None, shard_size: int = 1000,
                source_files: list[str | os.PathLike] = (), resume: bool = True, rank: int = 0,
                world: int = 1, barrier: Callable[[], None] | None = None,
                progress: Callable[[int], None] | None = None) -> dict | None:
    """Write crystals (objects with id, cell, positions, numbers, pbc, targets) to a sharded store.

    ``target_names`` defaults to the sorted target keys seen in the first shard. All ranks iterate
    the whole input (each keeps its own shards); after ``barrier()`` rank 0 checks every shard and
    writes the manifest, which it returns (other ranks return None). ``progress(n)`` is called with
    the number of crystals of each shard passed.
    """
    if shard_size < 1 or not 0 <= rank < world:
        raise ValueError(f"write_store: need shard_size >= 1 and 0 <= rank < world, got {shard_size}, "
                         f"{rank}, {world}")
    graph_spec = graph_spec or GraphSpec()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if rank == 0 and (out / MANIFEST).exists():
        os.remove(out / MANIFEST)  # the store is being rewritten: never leave a stale manifest
    chunks = _chunked(crystals, shard_size)
    first = next(chunks, None)
    if first is None:
        raise ValueError(f"write_store: no crystals to write to {out}")
    names = list(target_names) if target_names is not None else _infer_targets(first)
    settings = _settings_hash(graph_spec, names, shard_size)
    n_shards = 0
    for index, chunk in enumerate(_prepend(first, chunks)):
        n_shards = index + 1
        if index % world == rank:
            first_index = index * shard_size
            arrays, input_sha = shard_mod.assemble(chunk, first_index, names)
            if not (resume and _is_complete(out, index, input_sha, settings)):
                _write_one(out, index, arrays, input_sha, settings, graph_spec, names, first_index)
        if progress is not None:
            progress(len(chunk))
    if barrier is not None:
        barrier()
    if rank != 0:
        return None
    return finalize(out, n_shards, graph_spec, names, shard_size, settings, source_files)


def _prepend(first: list, rest: Iterator[list]) -> Iterator[list]:
    yield first
    yield from rest


def finalize(out: Path, n_shards: int, spec: GraphSpec, names: list[str], shard_size: int, settings: str,
             source_files: Iterable) -> dict:
    """Check every shard against its sidecar, then write ``manifest.json`` atomically."""
    sidecars = []
    for index in range(n_shards):
        path = out / shard_name(index)
        side = Path(str(path) + SIDECAR_SUFFIX)
        if not (path.is_file() and side.is_file()):
            raise StoreError(f"{path}: shard missing or unfinished (did every rank finish?)")
        meta = read_json(side)
        actual = sha256_file(path)
        if meta["sha256"] != actual or meta["settings_sha256"] != settings:
            raise StoreError(f"{path}: checksum {actual} or settings differ from its sidecar {side.name}")
        sidecars.append(meta)
    sources = [{"path": str(p), "sha256": sha256_source(p)} for p in source_files]
    manifest = build_manifest(spec, names, shard_size, sidecars, sources)
    write_json_atomic(out / MANIFEST, manifest)
    return manifest
