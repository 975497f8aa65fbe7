"""File-per-structure and multi-frame readers: CGCNN and ALIGNN folders, CIF folders, extxyz.

All of them stream: id_prop.csv is read row by row, folders are listed once, extxyz is split into
frames line by line and each frame is parsed on its own (so a bad frame can be skipped).
"""

from __future__ import annotations

import csv
import io
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from crysbench.data.crystal import Crystal, Provenance
from crysbench.data.fast_extxyz import parse_frame
from crysbench.data.readers import RawRecord, ase_scalars, parse_cif, parse_poscar, register_reader
from crysbench.data.validate import BadRecord

ID_PROP = "id_prop.csv"


def _id_prop_rows(folder: Path) -> Iterator[tuple[int, list[str]]]:
    """(row index, cells) of a header-less id_prop.csv, blank lines skipped."""
    path = folder / ID_PROP
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no {ID_PROP} in the folder")
    with open(path, newline="", encoding="utf-8") as fh:
        rows = (r for r in csv.reader(fh) if r and any(c.strip() for c in r))
        yield from enumerate(rows)


def _column_targets(values: Sequence[str], targets: Sequence[str] | None) -> dict[str, str]:
    """Name the target columns of one id_prop row: ``targets`` in column order, else ``target``
    (one column) or ``target_0``, ``target_1``, ... (several)."""
    if targets is None:
        names = ["target"] if len(values) == 1 else [f"target_{k}" for k in range(len(values))]
    else:
        names = list(targets)
    return {name: value.strip() for name, value in zip(names, values, strict=False)}


def _parse_structure_file(path: Path, key: str) -> Crystal:
    """CIF by suffix .cif, extxyz/xyz through ASE, anything else as a POSCAR."""
    suffix = path.suffix.lower()
    if suffix == ".cif":
        return parse_cif(path, key)
    if suffix in (".xyz", ".extxyz"):
        if not path.is_file():
            raise BadRecord(f"missing file {path.name}")
        crystal, _ = _extxyz_record(path.read_text(), key)
        return crystal
    return parse_poscar(path, key)


def _folder_record(path: Path, key: str, raw: Mapping[str, Any]) -> tuple[Crystal, Mapping[str, Any]]:
    return _parse_structure_file(path, key), raw


def _labelled_folder(folder: Path, targets: Sequence[str] | None, fmt: str,
                     file_of: Any) -> Iterator[RawRecord]:
    """Shared CGCNN / ALIGNN loop: id_prop.csv rows -> structure files beside it."""
    source = str(folder / ID_PROP)
    for i, row in _id_prop_rows(folder):
        key = row[0].strip()
        raw = _column_targets(row[1:], targets)
        prov = Provenance(source, i, key, fmt)
        yield RawRecord(prov, partial(_folder_record, folder / file_of(key), key, raw))


@register_reader("cgcnn", "dir")
def read_cgcnn(folder: Path, targets: Sequence[str] | None) -> Iterator[RawRecord]:
    """CGCNN folder: id_prop.csv (id,target[,more]) + <id>.cif; atom_init.json is ignored."""
    return _labelled_folder(folder, targets, "cgcnn", lambda key: f"{key}.cif")


@register_reader("alignn", "dir")
def read_alignn(folder: Path, targets: Sequence[str] | None) -> Iterator[RawRecord]:
    """ALIGNN folder: id_prop.csv rows ``<file name>,target`` with POSCAR (or .cif) files beside it."""
    return _labelled_folder(folder, targets, "alignn", lambda key: key)


def _natural_key(path: Path) -> tuple[int, int, str]:
    """Sort 2.cif before 10.cif; integer names first, then the rest alphabetically."""
    return (0, int(path.stem), "") if re.fullmatch(r"\d+", path.stem) else (1, 0, path.name)


def _cif_record(path: Path, key: str) -> tuple[Crystal, Mapping[str, Any]]:
    return parse_cif(path, key), {}


@register_reader("cif_folder", "dir")
def read_cif_folder(folder: Path, targets: Sequence[str] | None) -> Iterator[RawRecord]:
    """Unlabelled folder of *.cif (CrysGNN pre-training sets: P1 CIFs named <int>.cif)."""
    if targets:
        raise ValueError(f"{folder}: a cif_folder has no labels; read it with targets=None")
    files = sorted((p for p in folder.iterdir() if p.suffix.lower() == ".cif"), key=_natural_key)
    for i, path in enumerate(files):
        yield RawRecord(Provenance(str(path), i, path.stem, "cif_folder"),
                        partial(_cif_record, path, path.stem))


# ---- extxyz ----------------------------------------------------------------------------------
def _extxyz_record(text: str, key: str) -> tuple[Crystal, Mapping[str, Any]]:
    """(crystal, info + calculator scalars) from the text of one extxyz frame: the fast parser for
    the common layout (same record as ASE's), ASE's reader for everything else."""
    fast = parse_frame(text)
    if fast is not None:
        fields, scalars = fast
        cid = fields.pop("id")
        return Crystal(id=key if cid is None else cid, **fields), scalars
    return _ase_extxyz_record(text, key)


def _ase_extxyz_record(text: str, key: str) -> tuple[Crystal, Mapping[str, Any]]:
    """(crystal, info + calculator scalars) of one extxyz frame through ASE's general reader."""
    from ase.io import read as ase_read

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            atoms = ase_read(io.StringIO(text), format="extxyz")
    except Exception as exc:  # ASE raises many types on malformed frames
        raise BadRecord(f"unparsable extxyz frame: {type(exc).__name__}: {exc}") from exc
    key = str(atoms.info.get("id", key))
    return Crystal.from_ase(atoms, id=key), ase_scalars(atoms)


def _extxyz_frames(path: Path) -> Iterator[tuple[int, str | None]]:
    """(frame index, frame text) for each frame; text is None for a truncated last frame."""
    with open(path, encoding="utf-8") as fh:
        index, lineno = 0, 0
        while line := fh.readline():
            lineno += 1
            if not line.strip():
                continue
            try:
                n = int(line.split()[0])
            except ValueError:
                raise ValueError(f"{path}:{lineno}: expected an atom count line, got {line[:60]!r}") from None
            lines = [line]
            for _ in range(n + 1):
                lines.append(fh.readline())
                lineno += 1
            yield index, "".join(lines) if lines[-1] else None
            index += 1


def _truncated(_: str) -> tuple[Crystal, Mapping[str, Any]]:
    raise BadRecord("truncated frame: fewer atom lines than the count says")


@register_reader("extxyz", "file")
def read_extxyz(path: Path, targets: Sequence[str] | None) -> Iterator[RawRecord]:
    """ASE extended XYZ: Lattice="..." per frame; per-frame info keys (and energy) are targets."""
    del targets
    for index, text in _extxyz_frames(path):
        prov = Provenance(str(path), index, str(index), "extxyz")
        build = partial(_truncated, "") if text is None else partial(_extxyz_record, text, str(index))
        yield RawRecord(prov, build)
