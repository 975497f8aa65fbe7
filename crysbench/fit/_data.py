"""Input checks and per-point statistics shared by the fitting modules (numpy only)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FORMS = ("pure", "offset")
LOSSES = ("huber", "linear", "soft_l1", "cauchy")


@dataclass(frozen=True)
class Observations:
    """Validated observations: one row per run.

    x, y: [n_obs] float64, both > 0 and finite. group: [n_obs] int64 point index in 0..n_points-1
    (the caller's groups, or one point per distinct x when no groups were given).
    resample_points: True when no groups were given, so the bootstrap resamples rows.
    """

    x: np.ndarray
    y: np.ndarray
    group: np.ndarray
    resample_points: bool

    @property
    def n_obs(self) -> int:
        return int(self.x.size)

    @property
    def n_points(self) -> int:
        return int(self.group.max()) + 1


def _as_1d(name: str, values) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be numeric, got {type(values).__name__}: {err}") from None
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    return arr


def _check_positive_finite(name: str, arr: np.ndarray) -> None:
    bad = ~np.isfinite(arr)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{name} has {int(bad.sum())} non-finite value(s), first at index {i}: {arr[i]}")
    bad = arr <= 0
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{name} must be > 0 for a log-space fit; {int(bad.sum())} value(s) are not, "
            f"first at index {i}: {arr[i]}"
        )


def _group_index(groups, x: np.ndarray) -> np.ndarray:
    """Map caller group labels to 0..G-1 and check that each group sits at a single x."""
    labels = np.asarray(groups)
    if labels.ndim != 1 or labels.size != x.size:
        raise ValueError(
            f"groups must be 1-D with one label per observation ({x.size}), got shape {labels.shape}"
        )
    _, index = np.unique(labels, return_inverse=True)
    index = index.reshape(-1)
    for g in range(int(index.max()) + 1):
        xs = x[index == g]
        if not np.allclose(xs, xs[0], rtol=1e-12, atol=0.0):
            raise ValueError(
                f"group {labels[index == g][0]!r} mixes several x values "
                f"({xs.min():g} .. {xs.max():g}); a group must be one point on the x axis"
            )
    return index.astype(np.int64)


def validate(x, y, groups=None) -> Observations:
    """Check x, y (and groups) and return them as float64 arrays with a point index."""
    x_arr, y_arr = _as_1d("x", x), _as_1d("y", y)
    if x_arr.size != y_arr.size:
        raise ValueError(f"x and y must have the same length, got {x_arr.size} and {y_arr.size}")
    if x_arr.size == 0:
        raise ValueError("x and y are empty: nothing to fit")
    _check_positive_finite("x", x_arr)
    _check_positive_finite("y", y_arr)
    if groups is None:
        _, index = np.unique(x_arr, return_inverse=True)
        return Observations(x_arr, y_arr, index.reshape(-1).astype(np.int64), resample_points=True)
    return Observations(x_arr, y_arr, _group_index(groups, x_arr), resample_points=False)


def check_options(form: str, loss: str, ci: float, n_boot: int) -> None:
    """Raise ValueError for an unknown form or loss, a CI level outside (0, 1), or n_boot < 0."""
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    if not 0.0 < ci < 1.0:
        raise ValueError(f"ci must be a level in (0, 1), e.g. 0.95; got {ci}")
    if n_boot < 0:
        raise ValueError(f"n_boot must be >= 0, got {n_boot}")


@dataclass(frozen=True)
class PointStats:
    """Per-point summary in log space, sorted by x.

    x: [P] point positions; log_mean: [P] mean of log y over the point's runs; log_se: [P] standard
    error of that mean (NaN for a point with a single run); count: [P] runs per point.
    """

    x: np.ndarray
    log_mean: np.ndarray
    log_se: np.ndarray
    count: np.ndarray


def point_stats(obs: Observations) -> PointStats:
    """Mean and standard error of log y at every point, sorted by x."""
    n = obs.n_points
    count = np.bincount(obs.group, minlength=n)
    log_y = np.log(obs.y)
    mean = np.bincount(obs.group, weights=log_y, minlength=n) / count
    sq = np.bincount(obs.group, weights=(log_y - mean[obs.group]) ** 2, minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        se = np.where(count > 1, np.sqrt(sq / np.maximum(count - 1, 1) / count), np.nan)
    x = np.bincount(obs.group, weights=obs.x, minlength=n) / count
    order = np.argsort(x, kind="stable")
    return PointStats(x[order], mean[order], se[order], count[order])
