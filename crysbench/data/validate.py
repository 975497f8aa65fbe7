"""Record validation: every bad record becomes a ``RecordError`` naming file, record and reason.

Checks (``crystal_problem``): empty structure, non-finite cell or coordinates, atomic numbers outside
1..118, zero-volume or singular cell, overlapping atoms (minimum periodic distance below
``min_distance`` Å, brute force over the lattice images that can matter). Target checks
(``select_targets``): a required target that is missing ("na", empty, null), NaN, infinite or not a
number. Skipped records can be written as a CSV report with ``write_skip_report``.
"""

from __future__ import annotations

import csv
import math
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from crysbench.data.crystal import Crystal, Provenance

MIN_DISTANCE = 0.5  # Å; closer atoms are a broken record, not a dense crystal
MISSING_TOKENS = frozenset({"", "na", "n/a", "none", "null"})


class RecordError(ValueError):
    """A bad record: ``source`` file, ``record`` locator and ``reason`` are kept as attributes."""

    def __init__(self, source: str, record: str, reason: str) -> None:
        super().__init__(f"{source}: {record}: {reason}")
        self.source, self.record, self.reason = source, record, reason

    @classmethod
    def at(cls, provenance: Provenance, reason: str) -> RecordError:
        """The error for the record that ``provenance`` points at."""
        return cls(provenance.source, provenance.label(), reason)


class BadRecord(Exception):
    """Raised by parsing code that does not know the provenance; readers turn it into RecordError."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Skipped:
    """One skipped record for the skip report."""

    source: str
    record: str
    reason: str


# ---- targets ---------------------------------------------------------------------------------
def _as_float(value: Any) -> tuple[float | None, str]:
    """(number, "") for a numeric value, (None, why) for a missing or non-numeric one."""
    if value is None:
        return None, "missing (null)"
    if isinstance(value, bool):
        return None, f"not a number ({value!r})"
    if isinstance(value, (int, float, np.integer, np.floating)):
        return float(value), ""
    if isinstance(value, str):
        try:
            return float(value), ""
        except ValueError:
            pass
        if value.strip().lower() in MISSING_TOKENS:
            return None, f"missing ({value!r})"
    return None, f"not a number ({value!r:.40})"


def select_targets(raw: Mapping[str, Any], requested: Sequence[str] | None,
                   require: bool = True) -> dict[str, float]:
    """Pick finite float targets from ``raw``.

    ``requested=None`` keeps every finite numeric value and silently drops the rest. Otherwise each
    requested name must be present and finite (``BadRecord`` names it) unless ``require`` is False,
    in which case a bad or missing value is simply absent.
    """
    out: dict[str, float] = {}
    names = list(raw) if requested is None else list(requested)
    for name in names:
        if name not in raw:
            why = "missing (no such field)"
            number = None
        else:
            number, why = _as_float(raw[name])
            if number is not None and not math.isfinite(number):
                number, why = None, f"not finite ({number})"
        if number is not None:
            out[name] = number
        elif requested is not None and require:
            raise BadRecord(f"target {name!r} is {why}")
    return out


# ---- structure -------------------------------------------------------------------------------
def min_periodic_distance(crystal: Crystal, cutoff: float = MIN_DISTANCE) -> float:
    """Smallest distance (Å) between two atoms or an atom and its own image, if below ``cutoff``;
    otherwise returns ``inf``. Uses the native periodic neighbour list (linear in atoms; the former
    all-pairs × images check was quadratic and the slowest step of reading a large cell)."""
    return min_periodic_distances([crystal], cutoff)[0]


def min_periodic_distances(crystals: Sequence[Crystal], cutoff: float = MIN_DISTANCE) -> list[float]:
    """``min_periodic_distance`` of each crystal, from one batched neighbour-list call (the per-call
    cost, not the search, dominated for small cells). Cells must be finite and non-singular."""
    import torch

    from crysbench import ops

    if not crystals:
        return []
    sizes = [len(c) for c in crystals]
    ptr = torch.tensor(np.concatenate([[0], np.cumsum(sizes)]), dtype=torch.long)
    pos = torch.from_numpy(np.concatenate([np.asarray(c.positions) for c in crystals]).astype(np.float64))
    cell = torch.from_numpy(np.stack([np.asarray(c.cell) for c in crystals]).astype(np.float64))
    pbc = torch.tensor([[bool(p) for p in c.pbc] for c in crystals])
    ei, _, _, d, _ = ops.neighbor_list(pos, cell, pbc, ptr, float(cutoff), return_vectors=False)
    owner = torch.repeat_interleave(torch.arange(len(crystals)), torch.tensor(sizes))[ei]
    best = torch.full((len(crystals),), math.inf, dtype=torch.float64)
    best = best.scatter_reduce(0, owner, d, reduce="amin")
    return [b if b < cutoff else math.inf for b in best.tolist()]


def overlap_problem(d: float, min_distance: float) -> str | None:
    """The overlapping-atoms sentence for a minimum periodic distance ``d`` (Å), or None."""
    if d < min_distance:
        return f"overlapping atoms: minimum periodic distance {d:.3f} Å < {min_distance} Å"
    return None


def crystal_problem(crystal: Crystal, min_distance: float = MIN_DISTANCE) -> str | None:
    """The first thing wrong with ``crystal`` as a sentence, or None when it is a valid record."""
    if len(crystal) == 0:
        return "empty structure (no atoms)"
    if not np.isfinite(crystal.cell).all():
        return "non-finite lattice (NaN or inf in the cell)"
    if not np.isfinite(crystal.positions).all():
        return "non-finite coordinates (NaN or inf in positions)"
    bad = crystal.numbers[(crystal.numbers < 1) | (crystal.numbers > 118)]
    if bad.size:
        return f"unknown element: atomic number {int(bad[0])} is outside 1..118"
    volume = crystal.volume
    lengths = np.linalg.norm(crystal.cell, axis=1)
    if volume < 1e-3 or volume < 1e-6 * float(np.prod(lengths)):
        return f"zero-volume or singular cell (volume {volume:.3g} Å^3, lengths {np.round(lengths, 3)})"
    if min_distance > 0:
        return overlap_problem(min_periodic_distance(crystal, min_distance), min_distance)
    return None


def validate(crystal: Crystal, min_distance: float = MIN_DISTANCE) -> Crystal:
    """Return ``crystal`` unchanged, or raise ``RecordError`` naming its file, record and the reason."""
    reason = crystal_problem(crystal, min_distance)
    if reason is not None:
        raise RecordError.at(crystal.provenance, reason)
    return crystal


# ---- skip report -----------------------------------------------------------------------------
def write_skip_report(path: str | os.PathLike, skipped: Iterable[Skipped]) -> Path:
    """Write skipped records as CSV (source, record, reason) atomically: temp file + os.replace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["source", "record", "reason"])
            for s in skipped:
                writer.writerow([s.source, s.record, s.reason])
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
