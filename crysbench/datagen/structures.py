"""Where the built-in crystals come from.

* Real Materials Project formulas (matminer's ``mp_transport`` table, 47,737 formulas), restricted to
  elements with ``ase.collections.dcdft`` references and to formulas whose anonymized formula matches
  an AFLOW prototype of pymatgen; the survivors ship in ``mp_formulas.csv.gz`` (``mp_id,formula``) so
  generation needs no matminer. ``build_formula_table`` rebuilds it from matminer's wheel.
* Each formula is placed on a matching prototype (sites ordered by count, then electronegativity),
  and the volume is set by pymatgen's ``DLSVolumePredictor``.
* Random symmetric crystals from pyxtal, one crystal system requested per record.
"""

from __future__ import annotations

import csv
import gzip
import io
from functools import lru_cache
from pathlib import Path

import numpy as np

FORMULA_FILE = Path(__file__).with_name("mp_formulas.csv.gz")
MATMINER_MEMBER = "matminer/utils/data_files/mp_transport/transport_database.tar.xz"
MAX_PROTOTYPE_ATOMS = 48
PYXTAL_ATOMS = (4, 30)  # total atoms per conventional cell requested from pyxtal
_SYSTEM_SG_RANGES = ((1, 2), (3, 15), (16, 74), (75, 142), (143, 167), (168, 194), (195, 230))


@lru_cache(maxsize=1)
def dcdft_elements() -> tuple[str, ...]:
    """The 71 elements with WIEN2k reference crystals in ase's dcdft collection."""
    from ase.collections import dcdft

    return tuple(dcdft.names)


@lru_cache(maxsize=1)
def prototypes() -> dict[str, list[tuple[str, object]]]:
    """anonymized formula → [(aflow label, Structure)] with at most ``MAX_PROTOTYPE_ATOMS`` sites."""
    from pymatgen.analysis.prototypes import AFLOW_PROTOTYPE_LIBRARY

    table: dict[str, list] = {}
    for entry in AFLOW_PROTOTYPE_LIBRARY:
        s = entry["snl"].structure
        if len(s) <= MAX_PROTOTYPE_ATOMS and s.is_ordered:
            table.setdefault(s.composition.anonymized_formula, []).append((entry["tags"]["aflow"], s))
    for v in table.values():
        v.sort(key=lambda p: p[0])
    return table


def _read_matminer_rows(source: str) -> list[dict]:
    """Rows of matminer's transport_database.csv from an installed matminer or a wheel path."""
    import tarfile
    import zipfile

    if source.endswith(".whl"):
        blob = zipfile.ZipFile(source).read(MATMINER_MEMBER)
    else:
        blob = Path(source).read_bytes()
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:xz") as tar:
        text = io.TextIOWrapper(tar.extractfile("transport_database.csv"), encoding="utf-8")
        return list(csv.DictReader(text))


def build_formula_table(source: str, out: Path = FORMULA_FILE) -> int:
    """Rebuild ``mp_formulas.csv.gz`` from matminer's wheel (or its .tar.xz); returns the row count."""
    from pymatgen.core import Composition

    allowed, protos = set(dcdft_elements()), prototypes()
    keep: dict[str, str] = {}
    for row in sorted(_read_matminer_rows(source), key=lambda r: int(r["mp_id"].split("-")[1])):
        comp = Composition(row["pretty_formula"])
        if {e.symbol for e in comp.elements} <= allowed and comp.anonymized_formula in protos:
            keep.setdefault(comp.reduced_formula, row["mp_id"])
    lines = ["mp_id,formula"] + [f"{mp},{f}" for f, mp in sorted(keep.items())]
    with open(out, "wb") as raw, gzip.GzipFile("", "wb", 9, raw, mtime=0) as fh:
        fh.write(("\n".join(lines) + "\n").encode())
    return len(keep)


@lru_cache(maxsize=1)
def formula_prototype_pairs() -> list[tuple[str, str, int]]:
    """All (mp_id, formula, prototype index) pairs in a fixed order."""
    from pymatgen.core import Composition

    protos = prototypes()
    with gzip.open(FORMULA_FILE, "rt") as fh:
        rows = list(csv.DictReader(fh))
    pairs = []
    for row in rows:
        anon = Composition(row["formula"]).anonymized_formula
        pairs.extend((row["mp_id"], row["formula"], k) for k in range(len(protos[anon])))
    return pairs


def _site_order(comp) -> list[str]:
    """Elements sorted by amount, then Pauling electronegativity, then symbol."""
    from pymatgen.core import Element

    return sorted((e.symbol for e in comp.elements), key=lambda s: (comp[s], Element(s).X, s))


def place_formula(formula: str, proto_index: int):
    """The formula decorated on its prototype, volume from DLSVolumePredictor → (atoms, aflow label)."""
    from pymatgen.analysis.structure_prediction.volume_predictor import DLSVolumePredictor
    from pymatgen.core import Composition
    from pymatgen.io.ase import AseAtomsAdaptor

    comp = Composition(formula)
    label, proto = prototypes()[comp.anonymized_formula][proto_index]
    proto_comp = proto.composition.reduced_composition
    mapping = dict(zip(_site_order(proto_comp), _site_order(comp.reduced_composition), strict=True))
    s = proto.copy()
    s.replace_species(mapping)
    s = DLSVolumePredictor().get_predicted_structure(s)
    return AseAtomsAdaptor.get_atoms(s), label


def random_pyxtal(rng: np.random.Generator, system: int, max_tries: int = 30):
    """A random pyxtal crystal whose requested space group lies in crystal system ``system`` (0..6).

    Returns (atoms, requested space group, species). The caller labels symmetry with spglib.
    """
    from pyxtal import pyxtal
    from pyxtal.symmetry import Group

    elements = dcdft_elements()
    lo, hi = _SYSTEM_SG_RANGES[system]
    for _ in range(max_tries):
        sg = int(rng.integers(lo, hi + 1))
        n_species = int(rng.integers(1, 4))
        species = [elements[i] for i in rng.choice(len(elements), n_species, replace=False)]
        mults = sorted({w.multiplicity for w in Group(sg).Wyckoff_positions})
        counts = [int(rng.choice(mults)) * int(rng.integers(1, 3)) for _ in species]
        if not PYXTAL_ATOMS[0] <= sum(counts) <= PYXTAL_ATOMS[1]:
            continue
        crystal = pyxtal()
        try:
            crystal.from_random(3, sg, species, counts, random_state=int(rng.integers(2**31)))
        except Exception:  # pyxtal raises many types when a composition does not fit the group
            continue
        if crystal.valid:
            return crystal.to_ase(), sg, species
    raise RuntimeError(f"pyxtal gave no valid crystal for crystal system {system} in {max_tries} tries")
