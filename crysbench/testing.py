"""Small, seeded stores for tests and smoke runs (synthetic crystals with geometric targets)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np


@dataclasses.dataclass(frozen=True)
class _Crystal:
    id: str
    cell: np.ndarray
    positions: np.ndarray
    numbers: np.ndarray
    pbc: tuple
    targets: dict


def synthetic_crystals(n: int, seed: int = 0, atoms: tuple[int, int] = (2, 6)) -> list[_Crystal]:
    """Random triclinic crystals whose targets are learnable functions of the structure:
    ``volume_per_atom`` (Å^3) and ``mean_z`` (mean atomic number / 10)."""
    from crysbench.synthetic import random_cell

    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        m = int(rng.integers(atoms[0], atoms[1] + 1))
        density = rng.uniform(0.05, 0.10)
        cell = random_cell(rng, m / density)
        pos = rng.uniform(0, 1, size=(m, 3)) @ cell
        z = rng.integers(1, 30, size=m)
        vol = abs(np.linalg.det(cell))
        out.append(_Crystal(f"syn-{seed}-{k}", cell, pos, z, (True, True, True),
                            {"volume_per_atom": vol / m, "mean_z": float(z.mean()) / 10}))
    return out


def synthetic_store(path: str | Path, n: int = 60, seed: int = 0, cutoff: float = 5.0, max_neighbors: int = 8,
                    triplets: bool = False, shard_size: int = 25) -> Path:
    """Write (or reuse) a small store of :func:`synthetic_crystals` and return its folder."""
    from crysbench.store import GraphSpec, write_store

    path = Path(path)
    if not (path / "manifest.json").exists():
        write_store(synthetic_crystals(n, seed), path, GraphSpec(cutoff, max_neighbors, triplets),
                    shard_size=shard_size)
    return path
