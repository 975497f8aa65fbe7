"""Open a finished store: check its manifest and shards, map crystal indices to shards, read records."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from crysbench.store.manifest import MANIFEST, SCHEMA_VERSION, GraphSpec, StoreError, read_json, sha256_file
from crysbench.store.shard import read_shard


@dataclass(frozen=True)
class Store:
    """A verified store: its folder, manifest, and the first crystal index of every shard."""

    path: Path
    manifest: dict

    @property
    def spec(self) -> GraphSpec:
        return GraphSpec.from_dict(self.manifest["graph_spec"])

    @property
    def target_names(self) -> list[str]:
        return list(self.manifest["targets"]["names"])

    @property
    def shard_files(self) -> list[Path]:
        return [self.path / s["file"] for s in self.manifest["shards"]]

    @property
    def offsets(self) -> np.ndarray:
        """Global index of each shard's first crystal, plus the total: [S + 1] int64."""
        counts = [s["n_crystals"] for s in self.manifest["shards"]]
        return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    def __len__(self) -> int:
        return int(self.manifest["n_crystals"])

    def locate(self, index: int | np.ndarray):
        """Global crystal index → (shard, index within the shard)."""
        offsets = self.offsets
        idx = np.asarray(index)
        if np.any((idx < 0) | (idx >= len(self))):
            raise IndexError(f"crystal index out of range 0..{len(self) - 1}: {index}")
        shard = np.searchsorted(offsets, idx, side="right") - 1
        return shard, idx - offsets[shard]

    def read_shard(self, shard: int, with_triplets: bool = True) -> dict:
        return read_shard(str(self.shard_files[shard]), with_triplets)

    def column(self, name: str) -> np.ndarray | list:
        """One per-crystal dataset (e.g. 'spacegroup', 'ids', 'targets') over the whole store."""
        import h5py

        parts = []
        for f in self.shard_files:
            with h5py.File(f, "r") as h:
                parts.append(list(h["ids"].asstr()[()]) if name == "ids" else h[name][()])
        return sum(parts, []) if name == "ids" else np.concatenate(parts)

    def sizes(self) -> tuple[np.ndarray, np.ndarray]:
        """Atoms and edges of every crystal, [n_crystals] int64 each (reads only the ptr arrays)."""
        import h5py

        n_atoms, n_edges = [], []
        for f in self.shard_files:
            with h5py.File(f, "r") as h:
                n_atoms.append(np.diff(h["atom_ptr"][()]))
                n_edges.append(np.diff(h["edge_ptr"][()]))
        return np.concatenate(n_atoms).astype(np.int64), np.concatenate(n_edges).astype(np.int64)

    def fingerprint(self) -> str:
        """A short hash of the shard checksums: names this exact store content in split files."""
        import hashlib

        blob = "".join(s["sha256"] for s in self.manifest["shards"])
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def open_store(path: str | os.PathLike | Store, verify: bool = True) -> Store:
    """Open the store in ``path``; with ``verify`` check every shard's sha256 (else only sizes)."""
    if isinstance(path, Store):
        return path
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise StoreError(f"{path}: no {MANIFEST}; not a store, or its ingest did not finish "
                         "(rerun the ingest to resume it)")
    manifest = read_json(manifest_path)
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise StoreError(f"{manifest_path}: schema version {version}, this crysbench reads {SCHEMA_VERSION}; "
                         "re-ingest the source")
    for shard in manifest["shards"]:
        _check_shard(path / shard["file"], shard, verify)
    return Store(path, manifest)


def _check_shard(file: Path, entry: dict, verify: bool) -> None:
    if not file.is_file():
        raise StoreError(f"shard {file} listed in the manifest is missing")
    size = file.stat().st_size
    if size != entry["bytes"]:
        raise StoreError(f"shard {file}: {size} bytes, manifest expects {entry['bytes']} "
                         "(truncated or changed)")
    if verify:
        actual = sha256_file(file)
        if actual != entry["sha256"]:
            raise StoreError(f"shard {file} is corrupted: sha256 {actual}, "
                             f"manifest expects {entry['sha256']}")
