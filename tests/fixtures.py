"""Small fixtures of every real data format, written into a temporary folder by the tests.

Nothing binary is committed: each helper builds its file with pymatgen / ASE / json from a few
known structures, the way the real datasets were produced.
"""

from __future__ import annotations

import gzip
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


# ---- known structures ------------------------------------------------------------------------
def rock_salt(a: float = 5.64):
    """NaCl, Fm-3m (225), conventional cubic cell, 8 atoms."""
    from pymatgen.core import Lattice, Structure

    fcc = np.array([[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])
    coords = np.concatenate([fcc, (fcc + 0.5) % 1.0])  # Structure.from_spacegroup is ~3 s a call
    return Structure(Lattice.cubic(a), ["Na"] * 4 + ["Cl"] * 4, coords)


def wurtzite(a: float = 3.25, c: float = 5.21, u: float = 0.382):
    """ZnO, P6_3mc (186), 4 atoms."""
    from pymatgen.core import Lattice, Structure

    coords = [[1 / 3, 2 / 3, 0], [2 / 3, 1 / 3, 0.5], [1 / 3, 2 / 3, u], [2 / 3, 1 / 3, 0.5 + u]]
    return Structure(Lattice.hexagonal(a, c), ["Zn", "Zn", "O", "O"], coords)


def triclinic():
    """A low-symmetry cell (P1 or P-1) with three atoms at generic positions."""
    from pymatgen.core import Lattice, Structure

    lattice = Lattice.from_parameters(4.1, 5.3, 6.2, 78.0, 85.0, 101.0)
    return Structure(lattice, ["Si", "O", "O"], [[0.03, 0.07, 0.11], [0.41, 0.23, 0.37], [0.71, 0.58, 0.86]])


def skewed():
    """A triclinic cell built from an arbitrary (non-standard-orientation) matrix, atoms off-cell."""
    from pymatgen.core import Lattice, Structure

    matrix = [[4.0, 0.3, -0.2], [1.1, 4.4, 0.5], [-0.7, 0.9, 5.1]]
    return Structure(Lattice(matrix), ["Mg", "O", "O"], [[0.0, 0.0, 0.0], [0.5, 0.5, 0.2], [1.25, -0.3, 0.6]])


def structures() -> list:
    return [rock_salt(), wurtzite(), triclinic(), skewed()]


# ---- matbench / matminer ---------------------------------------------------------------------
def write_matbench(path: Path, items: Sequence[tuple[Any, Mapping[str, float]]],
                   columns: Sequence[str], index: Sequence[Any] | None = None) -> Path:
    """pandas orient="split" document as matminer's store_dataframe_as_json writes it (NaN -> null)."""
    def cell(v: float) -> float | None:
        return None if isinstance(v, float) and math.isnan(v) else v

    doc = {"index": list(index if index is not None else range(len(items))),
           "columns": ["structure", *columns],
           "data": [[s.as_dict(), *[cell(t.get(c, math.nan)) for c in columns]] for s, t in items]}
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", encoding="utf-8") as fh:
        json.dump(doc, fh)
    return path


# ---- JARVIS ----------------------------------------------------------------------------------
def jarvis_atoms(structure, cartesian: bool = False) -> dict:
    """The JARVIS ``atoms`` dict of a pymatgen structure."""
    coords = structure.cart_coords if cartesian else structure.frac_coords
    return {"lattice_mat": structure.lattice.matrix.tolist(), "coords": coords.tolist(),
            "elements": [site.specie.symbol for site in structure], "abc": list(structure.lattice.abc),
            "angles": list(structure.lattice.angles), "cartesian": cartesian, "props": [""] * len(structure)}


def jarvis_entry(jid: str, atoms: dict, **props: Any) -> dict:
    """One dft_3d-like record with a few of the usual non-numeric fields."""
    return {"jid": jid, "atoms": atoms, "spg_symbol": "P1", "crys": "unknown", "formula": "X", **props}


def write_jarvis(path: Path, entries: Sequence[dict]) -> Path:
    path.write_text(json.dumps(entries))
    return path


# ---- CGCNN / ALIGNN / CIF folders ------------------------------------------------------------
def write_id_prop(folder: Path, rows: Sequence[Sequence[Any]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "id_prop.csv").write_text("".join(",".join(str(v) for v in row) + "\n" for row in rows))
    return folder


def write_cgcnn(folder: Path, items: Sequence[tuple[str, Any, Sequence[float]]]) -> Path:
    """id_prop.csv + <id>.cif (pymatgen CifWriter, P1) + a stub atom_init.json."""
    from pymatgen.io.cif import CifWriter

    write_id_prop(folder, [(key, *values) for key, _, values in items])
    for key, structure, _ in items:
        CifWriter(structure).write_file(folder / f"{key}.cif")
    (folder / "atom_init.json").write_text(json.dumps({"1": [0.0] * 4}))
    return folder


def write_alignn(folder: Path, items: Sequence[tuple[str, Any, float]]) -> Path:
    """id_prop.csv rows ``POSCAR-<key>.vasp,value`` with the POSCARs beside it."""
    from pymatgen.io.vasp import Poscar

    write_id_prop(folder, [(f"POSCAR-{key}.vasp", value) for key, _, value in items])
    for key, structure, _ in items:
        Poscar(structure).write_file(folder / f"POSCAR-{key}.vasp")
    return folder


def write_cif_folder(folder: Path, items: Sequence[Any]) -> Path:
    """CrysGNN-style untagged folder: 0.cif, 1.cif, ... (P1)."""
    from pymatgen.io.cif import CifWriter

    folder.mkdir(parents=True, exist_ok=True)
    for i, structure in enumerate(items):
        CifWriter(structure).write_file(folder / f"{i}.cif")
    return folder


# ---- extxyz ----------------------------------------------------------------------------------
def write_extxyz(path: Path, items: Sequence[tuple[Any, Mapping[str, Any]]]) -> Path:
    """ASE extxyz frames with per-frame info keys."""
    from ase.io import write
    from pymatgen.io.ase import AseAtomsAdaptor

    frames = []
    for structure, info in items:
        atoms = AseAtomsAdaptor.get_atoms(structure)
        atoms.info = dict(info)
        frames.append(atoms)
    write(path, frames, format="extxyz")
    return path


# ---- comparison ------------------------------------------------------------------------------
def assert_same_structure(crystal, structure, tol: float = 1e-4, same_orientation: bool = True) -> None:
    """The crystal equals the pymatgen structure up to wrapping into the cell and atom order.

    Lattices are compared as matrices (``same_orientation``) or by metric tensor (CIF files store
    lengths and angles only); atoms are matched by element and fractional position modulo 1.
    """
    cell = np.asarray(structure.lattice.matrix)
    if same_orientation:
        np.testing.assert_allclose(crystal.cell, cell, atol=tol, err_msg=f"cell of {crystal.id}")
    else:
        np.testing.assert_allclose(crystal.cell @ crystal.cell.T, cell @ cell.T, atol=tol * 10,
                                   err_msg=f"metric of {crystal.id}")
    want_z = np.array([site.specie.Z for site in structure])
    assert sorted(crystal.numbers.tolist()) == sorted(want_z.tolist()), crystal.id
    got = crystal.frac_positions
    for z, frac in zip(want_z, structure.frac_coords, strict=True):
        d = got - frac
        d -= np.round(d)
        hit = (crystal.numbers == z) & (np.abs(d).max(axis=1) < tol)
        assert hit.sum() == 1, f"{crystal.id}: atom Z={z} at {frac} matched {hit.sum()} times"


def require_slurm(module: bool = False) -> None:
    """Skip unless a Slurm cluster answers (``sbatch`` on PATH and ``sinfo`` succeeds); with
    CRYSBENCH_REQUIRE_SLURM=1 (CI) a missing cluster is an error, not a skip."""
    import os
    import shutil
    import subprocess

    import pytest

    if shutil.which("sbatch") and subprocess.run(["sinfo", "-h"], capture_output=True).returncode == 0:
        return
    if os.environ.get("CRYSBENCH_REQUIRE_SLURM") == "1":
        raise RuntimeError("CRYSBENCH_REQUIRE_SLURM=1 but no Slurm answers: run slurm/local-cluster.sh up")
    pytest.skip("no Slurm cluster answers (start one with slurm/local-cluster.sh up)", allow_module_level=module)
