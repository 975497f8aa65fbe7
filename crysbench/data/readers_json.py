"""JSON dataset readers: matbench/matminer (pandas orient="split") and JARVIS-DFT lists.

Both formats are single JSON documents, so the document is loaded whole; structures are parsed
lazily, one record at a time, as the stream is consumed.
"""

from __future__ import annotations

import gzip
import json
import warnings
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from crysbench.data.crystal import Crystal, Provenance
from crysbench.data.readers import RawRecord, crystal_from_structure, register_reader
from crysbench.data.validate import BadRecord


def load_json(path: Path) -> Any:
    """Parse a .json file, gzip-compressed or not, or the single .json member of a .zip."""
    with open(path, "rb") as fh:
        magic = fh.read(4)
    try:
        if magic[:2] == b"\x1f\x8b":
            with gzip.open(path, "rt", encoding="utf-8") as fh:
                return json.load(fh)
        if magic == b"PK\x03\x04":
            with zipfile.ZipFile(path) as zf:
                members = [n for n in zf.namelist() if n.endswith(".json")]
                if len(members) != 1:
                    raise ValueError(f"expected one .json member in the zip, found {members}")
                return json.loads(zf.read(members[0]))
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not readable as JSON: {exc}") from exc


# ---- matbench --------------------------------------------------------------------------------
def _matbench_record(row: Any, columns: Sequence[str], s_col: int,
                     key: str) -> tuple[Crystal, Mapping[str, Any]]:
    """(crystal, raw targets) from one row of a split-oriented frame."""
    from pymatgen.core import Structure

    if not isinstance(row, list) or len(row) != len(columns):
        raise BadRecord(f"row has {len(row) if isinstance(row, list) else type(row).__name__} "
                        f"values for {len(columns)} columns")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            structure = Structure.from_dict(row[s_col])
    except Exception as exc:  # pymatgen raises many types on malformed dicts
        raise BadRecord(f"unparsable structure: {type(exc).__name__}: {exc}") from exc
    raw = {c: v for j, (c, v) in enumerate(zip(columns, row, strict=True)) if j != s_col}
    return crystal_from_structure(structure, key), raw


@register_reader("matbench", "file")
def read_matbench(path: Path, targets: Sequence[str] | None) -> Iterator[RawRecord]:
    """matbench/matminer .json(.gz): {"index": ids, "columns": ["structure", ...], "data": rows}."""
    doc = load_json(path)
    if not isinstance(doc, dict) or not {"columns", "data"} <= doc.keys():
        raise ValueError(f"{path}: not a pandas orient='split' document (needs 'columns' and 'data')")
    columns = [str(c) for c in doc["columns"]]
    if "structure" not in columns:
        raise ValueError(f"{path}: no 'structure' column (columns: {columns})")
    unknown = [t for t in targets or () if t not in columns]
    if unknown:
        raise ValueError(f"{path}: targets {unknown} are not columns (columns: {columns})")
    rows = doc["data"]
    index = doc.get("index") or list(range(len(rows)))
    if len(index) != len(rows):
        raise ValueError(f"{path}: {len(index)} index entries for {len(rows)} data rows")
    s_col = columns.index("structure")
    for i, (key, row) in enumerate(zip(index, rows, strict=True)):
        prov = Provenance(str(path), i, str(key), "matbench")
        yield RawRecord(prov, partial(_matbench_record, row, columns, s_col, str(key)))


# ---- JARVIS ----------------------------------------------------------------------------------
def _atomic_number(symbol: Any) -> int:
    from ase.data import atomic_numbers

    z = atomic_numbers.get(str(symbol).strip()) if isinstance(symbol, str) else None
    if z is None or z < 1:
        raise BadRecord(f"unknown element symbol {symbol!r}")
    return int(z)


def _jarvis_record(rec: Any, key: str) -> tuple[Crystal, Mapping[str, Any]]:
    """(crystal, raw targets) from one JARVIS dict; fractional coords unless atoms.cartesian."""
    if not isinstance(rec, dict) or not isinstance(rec.get("atoms"), dict):
        raise BadRecord("no 'atoms' structure in record")
    atoms = rec["atoms"]
    try:
        lattice = np.asarray(atoms["lattice_mat"], dtype=np.float64).reshape(3, 3)
        coords = np.asarray(atoms["coords"], dtype=np.float64).reshape(-1, 3)
        elements = list(atoms["elements"])
    except (KeyError, TypeError, ValueError) as exc:
        raise BadRecord(f"malformed 'atoms': {type(exc).__name__}: {exc}") from exc
    if len(elements) != len(coords):
        raise BadRecord(f"malformed 'atoms': {len(elements)} elements for {len(coords)} coords")
    numbers = [_atomic_number(e) for e in elements]
    with np.errstate(invalid="ignore", over="ignore"):  # non-finite input is reported by validation
        positions = coords if atoms.get("cartesian", False) else coords @ lattice
    raw = {k: v for k, v in rec.items() if k not in ("atoms", "jid")}
    return Crystal(id=key, cell=lattice, positions=positions, numbers=numbers), raw


@register_reader("jarvis", "file")
def read_jarvis(path: Path, targets: Sequence[str] | None) -> Iterator[RawRecord]:
    """JARVIS dft_3d / dft_2d JSON list (also .json.gz / .zip); "na" marks a missing value."""
    del targets  # fields differ between records; select_targets checks each one
    doc = load_json(path)
    if not isinstance(doc, list):
        raise ValueError(f"{path}: a JARVIS file is a JSON list of records, got {type(doc).__name__}")
    for i, rec in enumerate(doc):
        key = str(rec.get("jid", i)) if isinstance(rec, dict) else str(i)
        yield RawRecord(Provenance(str(path), i, key, "jarvis"), partial(_jarvis_record, rec, key))
