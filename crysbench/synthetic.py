"""Seeded synthetic crystals for tests and kernel benchmarks (no labels, no physics).

``random_batch`` draws triclinic cells with a target number density; ``fcc_supercell`` builds
large cubic cells. Both return the batched layout the ops take: positions [N, 3] Å, cells
[B, 3, 3] Å (rows are lattice vectors), pbc [B, 3] bool, ptr [B + 1] int64.
"""

from __future__ import annotations

import numpy as np
import torch


def random_cell(rng: np.random.Generator, volume: float, skew: float = 0.35) -> np.ndarray:
    """A random triclinic cell of the given volume (Å^3): unit-ish vectors plus a random shear."""
    while True:
        cell = np.eye(3) + skew * rng.uniform(-1.0, 1.0, size=(3, 3))
        det = abs(np.linalg.det(cell))
        lengths = np.linalg.norm(cell, axis=1)
        if det / np.prod(lengths) > 0.35:  # reject nearly flat cells: they are not crystals
            return cell * (volume / det) ** (1.0 / 3.0)


def random_batch(n_crystals: int = 1000, atoms: tuple[int, int] = (8, 64),
                 density: tuple[float, float] = (0.05, 0.10), seed: int = 0,
                 dtype: torch.dtype = torch.float64):
    """A batch of random triclinic crystals, atoms uniform in the cell, all axes periodic."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(atoms[0], atoms[1] + 1, size=n_crystals)
    cells, pos = [], []
    for n in counts:
        cell = random_cell(rng, n / rng.uniform(*density))
        cells.append(cell)
        pos.append(rng.uniform(0.0, 1.0, size=(n, 3)) @ cell)
    ptr = np.concatenate([[0], np.cumsum(counts)])
    return (torch.tensor(np.concatenate(pos), dtype=dtype), torch.tensor(np.stack(cells), dtype=dtype),
            torch.ones(n_crystals, 3, dtype=torch.bool), torch.tensor(ptr, dtype=torch.long))


def fcc_supercell(reps: int, a: float = 3.61, jitter: float = 0.05, seed: int = 0,
                  dtype: torch.dtype = torch.float64):
    """An fcc supercell (4 * reps^3 atoms, lattice constant ``a`` Å) with small random jitter."""
    rng = np.random.default_rng(seed)
    basis = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    grid = np.stack(np.meshgrid(*[np.arange(reps)] * 3, indexing="ij"), -1).reshape(-1, 1, 3)
    frac = (grid + basis[None]).reshape(-1, 3)
    pos = frac * a + rng.normal(0.0, jitter, size=frac.shape)
    cell = np.eye(3) * a * reps
    return (torch.tensor(pos, dtype=dtype), torch.tensor(cell[None], dtype=dtype),
            torch.ones(1, 3, dtype=torch.bool), torch.tensor([0, len(pos)], dtype=torch.long))
