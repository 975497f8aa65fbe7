"""The built-in offline crystal dataset, readable with the standard library only.

Files live in ``builtin/<set>/chunk-*.jsonl.gz`` with ``builtin/MANIFEST.json`` (counts, sha256,
seed, label table with units, package versions, the command that made them). Sets:

* ``labelled``: MP formulas on AFLOW prototypes (~80 %) and random pyxtal crystals (~20 %), with
  physics, CHGNet and CGCNN-teacher targets;
* ``untagged``: pyxtal crystals with only space group / crystal system, for self-supervised
  pre-training;
* ``experimental``: experimental formation enthalpies (eV/atom) on prototype structures, plus the
  same teacher targets.

One record per line::

    {"id": str, "cell": [[3 floats] x 3] (Å, rows are lattice vectors),
     "positions": [[x, y, z], ...] (Cartesian Å), "numbers": [Z, ...], "pbc": [bool] * 3,
     "targets": {name: float}, "spacegroup": 1..230 (spglib, symprec 0.01 Å),
     "crystal_system": 0..6 (triclinic, monoclinic, orthorhombic, tetragonal, trigonal, hexagonal,
     cubic), "source": "mp_formula_on_aflow" | "pyxtal" | "exp_formation_enthalpy",
     "provenance": {formula, prototype, mp_id, ...}}

Regenerate with ``python -m crysbench.datagen`` (needs ``requirements-datagen.txt``).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path

BUILTIN_DIR = Path(__file__).resolve().parent / "builtin"
SETS = ("labelled", "untagged", "experimental")


def manifest(root: Path = BUILTIN_DIR) -> dict:
    """The parsed MANIFEST.json of the shipped (or a regenerated) dataset folder."""
    path = Path(root) / "MANIFEST.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no MANIFEST.json; generate with `python -m crysbench.datagen`")
    return json.loads(path.read_text(encoding="utf-8"))


def iter_builtin(name: str = "labelled", root: Path = BUILTIN_DIR) -> Iterator[dict]:
    """Records of one set, in file order (chunk 0 first)."""
    if name not in SETS:
        raise ValueError(f"unknown built-in set {name!r}; expected one of {SETS}")
    entry = manifest(root)["sets"].get(name)
    if entry is None:
        raise FileNotFoundError(f"{root}/MANIFEST.json lists no {name!r} set (was it generated?)")
    for f in entry["files"]:
        path = Path(root) / f["path"]
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            for line_no, line in enumerate(fh, 1):
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{line_no}: bad JSON record ({exc})") from exc


def load_builtin(name: str = "labelled", root: Path = BUILTIN_DIR) -> list[dict]:
    """All records of ``labelled``, ``untagged`` or ``experimental`` as a list of dicts."""
    return list(iter_builtin(name, root))


def label_table(root: Path = BUILTIN_DIR) -> dict[str, dict]:
    """Target name → {unit, source, description}, as recorded in the manifest."""
    return manifest(root)["labels"]
