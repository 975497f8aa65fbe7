"""CGCNN/CrysGNN-style one-hot atom features for Z = 1..100, from pymatgen's periodic table.

Each property is binned into a one-hot block with one extra "unknown" bin for values pymatgen
lacks (e.g. the electronegativity of noble gases). Row 0 (Z = 0, padding) is all zeros.

The raw properties ship as ``element_properties.json`` (made by :func:`write_element_properties`
from pymatgen; a test checks it still matches), so building a model never imports pymatgen — that
import cost ~0.5 s of every sweep point's start-up.
"""

from __future__ import annotations

import functools
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

MAX_Z = 100
AVOGADRO = 6.02214076e23
_BLOCKS = ("s", "p", "d", "f")
ELEMENT_FILE = Path(__file__).with_name("element_properties.json")


@dataclass(frozen=True)
class Binning:
    """How one property becomes a one-hot block: categories, or ``n`` bins over [lo, hi]."""

    name: str
    categories: tuple = ()
    lo: float = 0.0
    hi: float = 1.0
    n: int = 0
    log: bool = False

    @property
    def width(self) -> int:
        """Number of columns, including the trailing unknown bin."""
        return (len(self.categories) or self.n) + 1

    def column(self, value) -> int:
        """Column of ``value`` inside this block; the last column means unknown."""
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            return self.width - 1
        if self.categories:
            return self.categories.index(value) if value in self.categories else self.width - 1
        lo, hi, x = self.lo, self.hi, float(value)
        if self.log:
            lo, hi, x = math.log(lo), math.log(hi), math.log(max(x, 1e-12))
        return min(max(int((x - lo) / (hi - lo) * self.n), 0), self.n - 1)  # clip to end bins


BINNINGS = (
    Binning("group", categories=tuple(range(1, 19))),
    Binning("period", categories=tuple(range(1, 8))),
    Binning("electronegativity", lo=0.5, hi=4.0, n=10),  # Pauling
    Binning("covalent_radius", lo=0.25, hi=2.5, n=10),  # Å
    Binning("valence_electrons", categories=tuple(range(1, 17))),
    Binning("first_ionization", lo=3.5, hi=25.0, n=10, log=True),  # eV
    Binning("electron_affinity", lo=-3.0, hi=3.7, n=10),  # eV
    Binning("block", categories=_BLOCKS),
    Binning("atomic_volume", lo=5.0, hi=120.0, n=10, log=True),  # Å^3 per atom
)


def valence_electrons(element) -> int:
    """Electrons outside the noble-gas core, counting only the d/f shell that is being filled."""
    if element.Z <= 2:
        return element.Z
    group, block = element.group, element.block
    if block in ("s", "d"):
        return group
    if block == "p":
        return group - 10
    shells = element.electronic_structure.split(".")[1:]  # f block: [Xe].4f7.5d1.6s2
    return sum(int(s[2:]) for s in shells)


def element_properties(z: int) -> dict:
    """The raw (unbinned) properties of element ``z``; None where pymatgen has no value."""
    from pymatgen.analysis.molecule_structure_comparator import CovalentRadius
    from pymatgen.core.periodic_table import Element

    el = Element.from_Z(z)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pymatgen warns about missing data; None covers it
        volume = el.molar_volume
        return {
            "group": el.group,
            "period": el.row,
            "electronegativity": el.X,
            "covalent_radius": CovalentRadius.radius.get(el.symbol),
            "valence_electrons": valence_electrons(el),
            "first_ionization": el.ionization_energy,
            "electron_affinity": el.electron_affinity,
            "block": el.block,
            "atomic_volume": None if volume is None else float(volume) * 1e24 / AVOGADRO,
        }


def write_element_properties(path: str | Path = ELEMENT_FILE) -> Path:
    """Regenerate the shipped raw-property file from pymatgen (atomically)."""
    path = Path(path)
    def plain(v):  # NaN (pymatgen's "no value") becomes null: both mean the unknown bin
        return None if isinstance(v, float) and not math.isfinite(v) else v

    rows = {str(z): {k: plain(v) for k, v in element_properties(z).items()} for z in range(1, MAX_Z + 1)}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(rows, indent=0, sort_keys=True) + "\n")
    tmp.replace(path)
    return path


@functools.lru_cache(maxsize=1)
def shipped_element_properties() -> dict[int, dict]:
    """The raw properties of Z = 1..100 as shipped (see :func:`write_element_properties`)."""
    try:
        rows = json.loads(ELEMENT_FILE.read_text())
    except (OSError, ValueError) as e:
        raise RuntimeError(f"{ELEMENT_FILE}: cannot read the shipped element table ({e}); regenerate it "
                           "with python -c 'from crysbench.features import write_element_properties as w; w()'")
    return {int(z): props for z, props in rows.items()}


@functools.lru_cache(maxsize=1)
def _table() -> np.ndarray:
    widths = [b.width for b in BINNINGS]
    starts = np.concatenate([[0], np.cumsum(widths)[:-1]])
    table = np.zeros((MAX_Z + 1, sum(widths)), dtype=np.float32)
    shipped = shipped_element_properties()
    for z in range(1, MAX_Z + 1):
        props = shipped[z]
        for binning, start in zip(BINNINGS, starts, strict=True):
            table[z, start + binning.column(props[binning.name])] = 1.0
    return table


def atom_feature_table(dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """One-hot atom features, shape [101, F] (row Z; row 0 is zeros). Deterministic, cached."""
    return torch.tensor(_table(), dtype=dtype)


def feature_names() -> list[str]:
    """Column names of :func:`atom_feature_table`, e.g. ``group=3`` or ``block=unknown``."""
    names = []
    for b in BINNINGS:
        labels = [str(c) for c in b.categories] or [f"bin{k}" for k in range(b.n)]
        names += [f"{b.name}={label}" for label in labels + ["unknown"]]
    return names
