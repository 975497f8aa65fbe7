"""Turn raw per-run records into per-point summaries and arrays ready for fitting."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ScalingPoints:
    """Runs grouped by x.

    Per point, sorted by x: x [P], mean [P] and std [P] of the loss (std with ddof=1, NaN for a
    single run), count [P]. Per run: x_runs, y_runs [R] and groups [R] (index into x), ready for
    ``fit_power_law(x_runs, y_runs, groups=groups)``.
    """

    x: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    count: np.ndarray
    x_runs: np.ndarray
    y_runs: np.ndarray
    groups: np.ndarray

    def fit_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(x_runs, y_runs, groups) for fit_power_law / compare_forms."""
        return self.x_runs, self.y_runs, self.groups

    def rows(self) -> list[dict]:
        """One dict per point (x, mean, std, count) for a points.csv."""
        return [
            {"x": float(x), "mean": float(m), "std": float(s), "count": int(c)}
            for x, m, s, c in zip(self.x, self.mean, self.std, self.count, strict=True)
        ]


def _field(record: Mapping, key: str, i: int) -> float:
    """Record ``i``'s value under ``key`` as a finite float > 0, or a ValueError naming it."""
    name = f"record {i}" + (f" (run_id {record['run_id']!r})" if "run_id" in record else "")
    if key not in record:
        raise ValueError(f"{name} has no {key!r} field; fields are {sorted(record)}")
    try:
        value = float(record[key])
    except (TypeError, ValueError):
        raise ValueError(f"{name}: {key!r} = {record[key]!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}: {key!r} = {value} must be finite and > 0 for a log-space fit")
    return value


def aggregate_runs(
    records: Sequence[Mapping], x_key: str = "x", loss_key: str = "loss", seed_key: str = "seed"
) -> ScalingPoints:
    """Group run records (dicts with x, seed and loss) by x.

    Raises ValueError for a missing field, a non-positive or non-finite x or loss, or two records
    with the same (x, seed): a run recorded twice would silently double its weight.
    """
    if len(records) == 0:
        raise ValueError("no run records to aggregate")
    xs, ys, seen = [], [], {}
    for i, rec in enumerate(records):
        if not isinstance(rec, Mapping):
            raise ValueError(f"record {i} is a {type(rec).__name__}, expected a dict")
        if seed_key not in rec:
            raise ValueError(f"record {i} has no {seed_key!r} field; fields are {sorted(rec)}")
        x, y = _field(rec, x_key, i), _field(rec, loss_key, i)
        key = (x, rec[seed_key])
        if key in seen:
            raise ValueError(
                f"records {seen[key]} and {i} both have {x_key} = {x:g} and "
                f"{seed_key} = {rec[seed_key]!r}; each run must appear once"
            )
        seen[key] = i
        xs.append(x)
        ys.append(y)
    return _summarise(np.array(xs), np.array(ys))


def _summarise(x_runs: np.ndarray, y_runs: np.ndarray) -> ScalingPoints:
    x, groups = np.unique(x_runs, return_inverse=True)
    groups = groups.reshape(-1)
    count = np.bincount(groups)
    mean = np.bincount(groups, weights=y_runs) / count
    sq = np.bincount(groups, weights=(y_runs - mean[groups]) ** 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        std = np.where(count > 1, np.sqrt(sq / np.maximum(count - 1, 1)), np.nan)
    return ScalingPoints(x, mean, std, count, x_runs, y_runs, groups.astype(np.int64))
