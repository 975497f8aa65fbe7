"""A fast path for the common extxyz frame; anything else goes to ASE's reader.

ASE's extxyz reader parses the comment line character by character (about 1 ms for a frame with
twenty info keys), which was the largest cost of ingesting small cells. ``parse_frame`` handles the
frames most files hold: ``Lattice="9 numbers"``, ``Properties=species:S:1:pos:R:3`` (optionally
followed by extra R/I columns, checked and ignored), ``pbc="T T T"`` and scalar info keys, with
plain or double-quoted values. It converts every value exactly as ASE 3.2x's ``key_val_str_to_dict``
does, so the records equal ASE's. It returns None (caller falls back to ASE) on anything else:
escapes, single quotes, brackets, bare flags, special 3x3 keys other than Lattice, ``_JSON`` values,
unknown species, lines whose column count differs, or a value that does not parse.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

# key=value or key="quoted value", each followed by whitespace or the end of the line
_PAIR = re.compile(r'\s*([^\s="]+)=(?:"([^"]*)"|([^\s"=]+))(?=\s|$)')
_UNSAFE = re.compile(r"[\\'{}\[\]]")  # escapes and other delimiters: leave them to ASE
_TOKENS = re.compile(r"[^\s,]+")
_BOOLS = {"T": True, "F": False, "true": True, "false": False, "True": True, "False": False,
          "TRUE": True, "FALSE": False}
# ASE moves these from info into a SinglePointCalculator; only the scalar ones pass through as is.
_CALC_SCALARS = frozenset({"energy", "free_energy", "magmom"})
_CALC_OTHER = frozenset({"stress", "dipole", "polarization", "dielectric_tensor", "virial"})
_DEFAULT_PROPERTIES = "species:S:1:pos:R:3"
_RESERVED_COLUMNS = frozenset({"species", "pos", "Z", "move_mask", "positions", "numbers", "symbols",
                               "initial_charges"})


class _Fallback(Exception):
    """This frame needs ASE's general reader."""


def _header_pairs(line: str) -> dict[str, str]:
    """Raw key -> value text of the comment line; _Fallback unless every token is key=value."""
    if _UNSAFE.search(line):
        raise _Fallback
    out, pos, end = {}, 0, len(line.rstrip())
    while pos < end:
        m = _PAIR.match(line, pos)
        if m is None:
            raise _Fallback
        out[m.group(1)] = m.group(2) if m.group(2) is not None else m.group(3)
        pos = m.end()
    return out


def _ase_value(key: str, text: str) -> Any:
    """The value ASE's ``key_val_str_to_dict`` gives ``text`` (non-special keys only)."""
    if key.lower() == "uid":
        value: Any = text
    else:
        parts = _TOKENS.findall(text)
        try:
            try:
                num = np.array(parts, dtype=int)
            except (ValueError, OverflowError):
                num = np.array(parts, dtype=float)
            value = num[0] if len(num) == 1 else num
        except (ValueError, OverflowError):
            value = text
    if isinstance(value, str):
        flags = [_BOOLS.get(p) for p in _TOKENS.findall(value)]
        if flags and None not in flags:
            return flags[0] if len(flags) == 1 else flags
        if value.startswith("_JSON "):
            raise _Fallback
    return value


def _extra_columns(properties: str) -> list:
    """Converters of the columns after species and pos; _Fallback unless those two come first and the
    rest are plain R / I columns that ASE would only store (names it treats specially are excluded)."""
    if not properties.startswith(_DEFAULT_PROPERTIES):
        raise _Fallback
    fields = properties.split(":")
    names = fields[6::3]
    if len(fields) % 3 or len(set(names)) != len(names) or set(names) & _RESERVED_COLUMNS:
        raise _Fallback
    convs: list = []
    for kind, cols in zip(fields[7::3], fields[8::3], strict=True):
        if kind not in ("R", "I") or not cols.isdigit() or int(cols) < 1:
            raise _Fallback
        convs += [float if kind == "R" else int] * int(cols)
    return convs


def _scalar(value: Any) -> bool:
    return isinstance(value, (int, float, str, np.integer, np.floating)) and not isinstance(value, bool)


def _atoms(lines: list[str], extra: list) -> tuple[np.ndarray, np.ndarray]:
    """(atomic numbers, positions) of the atom lines, every extra column checked like ASE does."""
    from ase.data import atomic_numbers

    rows = [line.split() for line in lines]
    if any(len(r) != 4 + len(extra) for r in rows):
        raise _Fallback
    try:
        numbers = [atomic_numbers[r[0].capitalize()] for r in rows]
        positions = [[float(x) for x in r[1:4]] for r in rows]
        for r in rows if extra else ():  # ASE rejects a frame whose extra column does not parse
            for conv, x in zip(extra, r[4:], strict=True):
                conv(x)
    except (KeyError, ValueError):
        raise _Fallback from None
    return np.array(numbers, dtype=np.int64), np.array(positions, dtype=np.float64).reshape(-1, 3)


def parse_frame(text: str) -> tuple[dict, Mapping[str, Any]] | None:
    """Fields of one extxyz frame (``cell``, ``positions``, ``numbers``, ``pbc``, ``id`` or None) and
    its scalar info / energy values, equal to what the ASE path yields; None when ASE must read it."""
    try:
        return _parse(text)
    except _Fallback:
        return None


def _parse(text: str) -> tuple[dict, Mapping[str, Any]]:
    lines = text.split("\n")  # not splitlines(): ASE's readline breaks on "\n" only
    if lines[-1] == "":
        lines.pop()
    if len(lines) < 2:
        raise _Fallback
    try:
        natoms = int(lines[0])
    except ValueError:
        raise _Fallback from None
    if natoms < 1 or len(lines) != natoms + 2:
        raise _Fallback
    raw = _header_pairs(lines[1].strip())
    if "Lattice" not in raw or any(k in _CALC_OTHER for k in raw):
        raise _Fallback
    lattice = _ase_value("Lattice", raw.pop("Lattice"))
    if not isinstance(lattice, np.ndarray) or lattice.shape != (9,):
        raise _Fallback
    extra = _extra_columns(raw.pop("Properties", _DEFAULT_PROPERTIES))
    pbc: Any = True
    if "pbc" in raw:
        pbc = _ase_value("pbc", raw.pop("pbc"))
        if not (isinstance(pbc, bool) or (isinstance(pbc, list) and len(pbc) == 3)):
            raise _Fallback
    info = {k: _ase_value(k, v) for k, v in raw.items()}
    numbers, positions = _atoms(lines[2:], extra)
    fields = {"cell": lattice.astype(np.float64).reshape(3, 3), "positions": positions,
              "numbers": numbers, "pbc": tuple(bool(p) for p in np.broadcast_to(pbc, (3,))),
              "id": str(info["id"]) if "id" in info else None}
    scalars = {k: v for k, v in info.items() if k != "id" and _scalar(v)}
    return fields, scalars
