"""Readers: real dataset formats -> streams of validated ``Crystal`` records.

``read(source, format, targets=None, on_error="fail")`` picks a reader from the registry by name.
A reader is a generator of ``RawRecord``: a provenance plus a ``build`` callable that parses that
one record, so a bad record is caught on its own and the stream goes on in ``on_error="skip"``
mode. ``read`` then selects targets, validates the structure and either raises ``RecordError``
(naming file, record and reason) or collects a ``Skipped`` entry in ``Reading.skipped``.

Formats: matbench, jarvis (``readers_json``), cgcnn, alignn, cif_folder, extxyz (``readers_files``)
and memory (lists of pymatgen ``Structure`` / ASE ``Atoms`` / ``Crystal``, optionally paired with
a target dict). pymatgen and ASE are imported inside functions only.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from crysbench.data.crystal import Crystal, Provenance
from crysbench.data.validate import (
    MIN_DISTANCE,
    BadRecord,
    RecordError,
    Skipped,
    crystal_problem,
    min_periodic_distances,
    overlap_problem,
    select_targets,
)

Build = Callable[[], tuple[Crystal, Mapping[str, Any]]]
# Records parsed ahead and checked for overlapping atoms together (one neighbour-list call): a bad
# record still raises, or is skipped, at its own place in the stream.
VALIDATE_BLOCK = 64


@dataclass(frozen=True)
class RawRecord:
    """One not-yet-parsed record: where it is and how to parse it into (crystal, raw targets)."""

    provenance: Provenance
    build: Build


ReaderFn = Callable[[Any, Sequence[str] | None], Iterator[RawRecord]]


@dataclass(frozen=True)
class ReaderSpec:
    """A registered reader and what its ``source`` must be: "file", "dir" or "memory"."""

    fn: ReaderFn
    source_kind: Literal["file", "dir", "memory"]
    doc: str


READERS: dict[str, ReaderSpec] = {}


def register_reader(name: str, source_kind: Literal["file", "dir", "memory"]):
    """Decorator: register ``fn(source, targets) -> Iterator[RawRecord]`` under ``name``."""

    def wrap(fn: ReaderFn) -> ReaderFn:
        if name in READERS:
            raise ValueError(f"reader {name!r} is already registered")
        READERS[name] = ReaderSpec(fn, source_kind, (fn.__doc__ or "").strip().splitlines()[0])
        return fn

    return wrap


def _ensure_registered() -> None:
    """Import the format modules (they register themselves) on first use."""
    from crysbench.data import readers_files, readers_json  # noqa: F401


def available_formats() -> list[str]:
    """Names accepted by ``read``."""
    _ensure_registered()
    return sorted(READERS)


def _check_source(source: Any, spec: ReaderSpec, fmt: str) -> Any:
    """Fail early, naming the format, when ``source`` cannot be what the reader expects."""
    if spec.source_kind == "memory":
        if isinstance(source, (str, os.PathLike)):
            raise ValueError(f"format {fmt!r} reads in-memory objects, got a path {str(source)!r}")
        return source
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"{fmt} source not found: {path}")
    if spec.source_kind == "dir" and not path.is_dir():
        raise NotADirectoryError(f"{fmt} source must be a folder, got file {path}")
    if spec.source_kind == "file" and path.is_dir():
        raise IsADirectoryError(f"{fmt} source must be a file, got folder {path}")
    return path


class Reading:
    """An iterable of valid ``Crystal`` records from one source; ``skipped`` fills as it runs.

    Each iteration re-reads the source and resets ``skipped``.
    """

    def __init__(self, records: Callable[[], Iterator[RawRecord]], targets: Sequence[str] | None,
                 on_error: str, require_targets: bool, min_distance: float) -> None:
        self._records = records
        self.targets, self.on_error = targets, on_error
        self.require_targets, self.min_distance = require_targets, min_distance
        self.skipped: list[Skipped] = []

    def _finish(self, raw: RawRecord) -> Crystal | RecordError:
        """Parse, select targets and validate one record (all but the overlap check, which
        ``_finish_block`` batches); a bad record is returned as its RecordError."""
        prov = raw.provenance
        try:
            crystal, raw_targets = raw.build()
            if crystal.id and crystal.id != prov.key:  # the id found inside the record wins
                prov = dataclasses.replace(prov, key=crystal.id)
            targets = select_targets(raw_targets, self.targets, self.require_targets)
            crystal = dataclasses.replace(crystal, id=prov.key, targets=targets, provenance=prov)
            reason = crystal_problem(crystal, 0.0)
        except BadRecord as exc:
            reason = exc.reason
        return crystal if reason is None else RecordError.at(prov, reason)

    def _next_block(self, records: Iterator[RawRecord]) -> tuple[list, BaseException | None]:
        """Up to VALIDATE_BLOCK finished records, overlap-checked together. It stops early at a bad
        record when failing, and at an exception of the reader itself, which it returns to be raised
        after the records before it (the order of errors is that of record-by-record reading)."""
        out: list[Crystal | RecordError] = []
        deferred = None
        while len(out) < VALIDATE_BLOCK:
            try:
                raw = next(records, None)
                if raw is None:
                    break
                out.append(self._finish(raw))
            except Exception as exc:  # noqa: BLE001 - re-raised by __iter__ in its place
                deferred = exc
                break
            if self.on_error == "fail" and isinstance(out[-1], RecordError):
                break
        if self.min_distance > 0:
            valid = [k for k, c in enumerate(out) if isinstance(c, Crystal)]
            dists = min_periodic_distances([out[k] for k in valid], self.min_distance)
            for k, d in zip(valid, dists, strict=True):
                reason = overlap_problem(d, self.min_distance)
                if reason is not None:
                    out[k] = RecordError.at(out[k].provenance, reason)
        return out, deferred

    def __iter__(self) -> Iterator[Crystal]:
        self.skipped = []
        records = self._records()
        while True:
            block, deferred = self._next_block(records)
            for result in block:
                if isinstance(result, Crystal):
                    yield result
                elif self.on_error == "fail":
                    raise result
                else:
                    self.skipped.append(Skipped(result.source, result.record, result.reason))
            if deferred is not None:
                raise deferred
            if len(block) < VALIDATE_BLOCK:
                return


def read(source: Any, format: str, targets: Sequence[str] | None = None,
         on_error: Literal["fail", "skip"] = "fail", require_targets: bool = True,
         min_distance: float = MIN_DISTANCE) -> Reading:
    """Stream valid ``Crystal`` records from ``source`` in the named ``format``.

    Args:
        source: file or folder path, or a list of objects for ``format="memory"``.
        format: a name from ``available_formats()``.
        targets: property names to keep; None keeps every finite numeric property found. For the
            header-less id_prop.csv formats (cgcnn, alignn) they name the value columns in order
            (default names: ``target``, or ``target_0``, ``target_1``, ... for several columns).
        on_error: "fail" raises the first ``RecordError``; "skip" drops bad records and lists them
            in ``Reading.skipped`` (see ``write_skip_report``).
        require_targets: when True a requested target that is missing/NaN/inf makes the record bad;
            when False it is just absent from ``Crystal.targets``.
        min_distance: atoms closer than this (Å, periodic) make the record bad; 0 disables.
    """
    _ensure_registered()
    if format not in READERS:
        raise ValueError(f"unknown format {format!r}; available: {', '.join(sorted(READERS))}")
    if on_error not in ("fail", "skip"):
        raise ValueError(f"on_error must be 'fail' or 'skip', got {on_error!r}")
    spec = READERS[format]
    src = _check_source(source, spec, format)
    wanted = None if targets is None else list(targets)
    return Reading(lambda: spec.fn(src, wanted), wanted, on_error, require_targets, min_distance)


# ---- shared parsing helpers ------------------------------------------------------------------
def crystal_from_structure(structure: Any, key: str) -> Crystal:
    """``Crystal.from_pymatgen`` with its ValueErrors (disorder, dummy species) as BadRecord."""
    try:
        return Crystal.from_pymatgen(structure, id=key)
    except ValueError as exc:
        raise BadRecord(str(exc)) from exc


def parse_cif(path: Path, key: str) -> Crystal:
    """First structure of a CIF file (conventional setting as written, not reduced to primitive)."""
    from pymatgen.io.cif import CifParser

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            structures = CifParser(path).parse_structures(primitive=False, on_error="raise")
    except FileNotFoundError as exc:
        raise BadRecord(f"missing file {path.name}") from exc
    except Exception as exc:  # pymatgen raises many types on malformed CIF text
        raise BadRecord(f"unparsable CIF {path.name}: {type(exc).__name__}: {exc}") from exc
    if not structures:
        raise BadRecord(f"unparsable CIF {path.name}: no structure in file")
    return crystal_from_structure(structures[0], key)


def parse_poscar(path: Path, key: str) -> Crystal:
    """A VASP POSCAR/CONTCAR file (species names must be in the file)."""
    from pymatgen.io.vasp import Poscar

    try:
        text = path.read_text()
    except FileNotFoundError as exc:
        raise BadRecord(f"missing file {path.name}") from exc
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            structure = Poscar.from_str(text, read_velocities=False).structure
    except Exception as exc:  # pymatgen raises many types on malformed POSCAR text
        raise BadRecord(f"unparsable POSCAR {path.name}: {type(exc).__name__}: {exc}") from exc
    return crystal_from_structure(structure, key)


def ase_scalars(atoms: Any) -> dict[str, Any]:
    """Per-structure scalar values of ASE ``Atoms``: ``info`` entries plus scalar calculator results
    (ASE moves ``energy``/``free_energy`` from extxyz comments into a calculator)."""
    values = {k: v for k, v in atoms.info.items() if k != "id" and _is_scalar(v)}
    calc = getattr(atoms, "calc", None)
    for k, v in (getattr(calc, "results", None) or {}).items():
        if _is_scalar(v):
            values.setdefault(k, v)
    return values


def _is_scalar(value: Any) -> bool:
    import numpy as np

    return isinstance(value, (int, float, str, np.integer, np.floating)) and not isinstance(value, bool)


# ---- in-memory -------------------------------------------------------------------------------
def _memory_item(item: Any, index: int) -> tuple[Crystal, Mapping[str, Any]]:
    """(crystal, raw targets) for a Structure / Atoms / Crystal, or such an object paired with a dict."""
    obj, given = (item[0], item[1]) if isinstance(item, tuple) and len(item) == 2 else (item, None)
    key = str(index)
    if isinstance(obj, Crystal):
        return dataclasses.replace(obj, id=obj.id or key), given if given is not None else obj.targets
    if hasattr(obj, "get_atomic_numbers"):  # ASE Atoms
        found = ase_scalars(obj)
        key = str(obj.info.get("id", key))
        return Crystal.from_ase(obj, id=key), given if given is not None else found
    if hasattr(obj, "lattice") and hasattr(obj, "sites"):  # pymatgen Structure
        props = {k: v for k, v in (getattr(obj, "properties", None) or {}).items() if _is_scalar(v)}
        key = str(props.pop("id", key))
        return crystal_from_structure(obj, key), given if given is not None else props
    raise BadRecord(f"not a Structure, Atoms or Crystal: {type(obj).__name__}")


@register_reader("memory", "memory")
def read_memory(items: Iterable[Any], targets: Sequence[str] | None) -> Iterator[RawRecord]:
    """In-memory pymatgen Structures / ASE Atoms / Crystals, each optionally ``(obj, targets)``."""
    del targets  # names come from the given dicts
    for index, item in enumerate(items):
        prov = Provenance("<memory>", index, str(index), "memory")
        yield RawRecord(prov, lambda item=item, index=index: _memory_item(item, index))
