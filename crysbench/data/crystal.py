"""The canonical crystal record every reader produces and every later stage consumes.

A ``Crystal`` holds one periodic structure in plain numpy arrays (Å, Cartesian, rows of ``cell``
are lattice vectors), its id, its scalar targets and where it came from. Conversions to and from
pymatgen ``Structure`` and ASE ``Atoms`` import those packages lazily.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Provenance:
    """Where a record came from: ``source`` file (or ``<memory>``), 0-based ``index`` in it,
    its ``key`` there (id, file name or row label) and the reader ``format`` name."""

    source: str
    index: int
    key: str
    format: str

    def label(self) -> str:
        """Human-readable record locator for error messages, e.g. ``record 3 (id 'JVASP-1')``."""
        return f"record {self.index} (id {self.key!r})"


MEMORY = Provenance(source="<memory>", index=0, key="", format="memory")


def _frozen_array(value: Any, dtype: type, shape_tail: tuple[int, ...], name: str) -> np.ndarray:
    """A read-only copy of ``value`` as ``dtype`` whose trailing dimensions are ``shape_tail``."""
    arr = np.array(value, dtype=dtype, copy=True)
    if arr.size == 0 and shape_tail:
        arr = arr.reshape((0, *shape_tail))
    ndim = len(shape_tail) + 1
    if arr.ndim != ndim or arr.shape[1:] != shape_tail:
        want = "[n" + "".join(f", {d}" for d in shape_tail) + "]"
        raise ValueError(f"{name} must have shape {want}, got {list(arr.shape)}")
    arr.setflags(write=False)
    return arr


@dataclass(frozen=True, eq=False)
class Crystal:
    """One periodic crystal.

    Attributes:
        id: record id (unique within its source).
        cell: [3, 3] float64, Å; rows are the lattice vectors a, b, c.
        positions: [n, 3] float64, Å, Cartesian (not necessarily wrapped into the cell).
        numbers: [n] int64 atomic numbers.
        pbc: periodicity along a, b, c.
        targets: property name -> finite float; a missing value is absent, never NaN.
        provenance: source file, record index/key and format.
    """

    id: str
    cell: np.ndarray
    positions: np.ndarray
    numbers: np.ndarray
    pbc: tuple[bool, bool, bool] = (True, True, True)
    targets: Mapping[str, float] = field(default_factory=dict)
    provenance: Provenance = MEMORY

    def __post_init__(self) -> None:
        cell = np.array(self.cell, dtype=np.float64, copy=True)
        if cell.shape != (3, 3):
            raise ValueError(f"cell must have shape [3, 3], got {list(cell.shape)}")
        cell.setflags(write=False)
        positions = _frozen_array(self.positions, np.float64, (3,), "positions")
        numbers = np.array(self.numbers, copy=True)
        if numbers.size and not np.issubdtype(numbers.dtype, np.integer):
            raise ValueError(f"numbers must be integers, got dtype {numbers.dtype}")
        numbers = _frozen_array(numbers.astype(np.int64), np.int64, (), "numbers")
        if len(numbers) != len(positions):
            raise ValueError(f"{len(numbers)} atomic numbers for {len(positions)} positions")
        pbc = tuple(bool(p) for p in np.broadcast_to(np.asarray(self.pbc, dtype=bool), (3,)))
        object.__setattr__(self, "id", str(self.id))
        object.__setattr__(self, "cell", cell)
        object.__setattr__(self, "positions", positions)
        object.__setattr__(self, "numbers", numbers)
        object.__setattr__(self, "pbc", pbc)
        object.__setattr__(self, "targets", dict(self.targets))

    def __len__(self) -> int:
        return len(self.numbers)

    @property
    def volume(self) -> float:
        """Cell volume in Å^3 (absolute value of the determinant)."""
        return float(abs(np.linalg.det(self.cell)))

    @property
    def frac_positions(self) -> np.ndarray:
        """[n, 3] fractional coordinates (not wrapped)."""
        return np.linalg.solve(self.cell.T, self.positions.T).T

    # ---- pymatgen -------------------------------------------------------------------------
    @classmethod
    def from_pymatgen(cls, structure: Any, id: str = "", targets: Mapping[str, float] | None = None,
                      provenance: Provenance = MEMORY) -> Crystal:
        """Build from an ordered pymatgen ``Structure``; disordered or dummy sites are errors."""
        from pymatgen.core import DummySpecies

        numbers = []
        for i, site in enumerate(structure):
            if not site.is_ordered:
                raise ValueError(f"site {i} is disordered ({site.species}); only ordered crystals")
            if isinstance(site.specie, DummySpecies):
                raise ValueError(f"unknown element {str(site.specie)!r} at site {i}")
            numbers.append(int(site.specie.Z))
        return cls(id=id, cell=structure.lattice.matrix, positions=structure.cart_coords.reshape(-1, 3),
                   numbers=numbers, pbc=tuple(structure.lattice.pbc), targets=targets or {},
                   provenance=provenance)

    def to_pymatgen(self) -> Any:
        """A pymatgen ``Structure`` (Cartesian coordinates kept as is; targets in ``properties``)."""
        from pymatgen.core import Lattice, Structure

        lattice = Lattice(self.cell, pbc=self.pbc)
        return Structure(lattice, self.numbers.tolist(), self.positions, coords_are_cartesian=True,
                         properties={"id": self.id, **self.targets})

    # ---- ASE --------------------------------------------------------------------------------
    @classmethod
    def from_ase(cls, atoms: Any, id: str = "", targets: Mapping[str, float] | None = None,
                 provenance: Provenance = MEMORY) -> Crystal:
        """Build from ASE ``Atoms`` (``atoms.info`` is ignored here; readers pick targets)."""
        return cls(id=id, cell=np.asarray(atoms.cell[:]), positions=atoms.get_positions(),
                   numbers=atoms.get_atomic_numbers(), pbc=tuple(atoms.pbc), targets=targets or {},
                   provenance=provenance)

    def to_ase(self) -> Any:
        """ASE ``Atoms`` with the id and targets in ``info``."""
        from ase import Atoms

        return Atoms(numbers=self.numbers, positions=self.positions, cell=self.cell, pbc=self.pbc,
                     info={"id": self.id, **self.targets})
