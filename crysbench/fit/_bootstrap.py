"""Percentile bootstrap for power-law parameters (Efron & Tibshirani 1993, ch. 13).

Two resampling schemes:
- seeds within points (groups given): every point keeps its x and its number of runs; its runs are
  drawn with replacement. This is the noise the scaling study actually has (seed-to-seed
  variation at fixed x) and never drops an x, so the x-range of every replicate is the data's.
  Points are strata and seeds the units, so drawing n of n runs shrinks the spread by
  (n - 1) / n in variance -- a 2-4 seed study would get CIs 13-29 % too narrow. As in the
  rescaling bootstrap for stratified samples (Rao & Wu 1988, JASA 83:231), a drawn run's log loss
  is moved away from its point's mean by sqrt(n / (n - 1)), which undoes that shrinkage.
- points (no groups, or every group has a single run): rows are drawn with replacement.
Measured on synthetic pure power laws (6 points over 2 decades, log-normal noise sd 0.1, 150
studies, 200 replicates): nominal 95 % beta intervals covered the truth in 91 % of studies with 3
seeds per point and 95 % with 5 seeds; offset form, 4 seeds, 60 studies: 95 % / 93 % / 95 % for
alpha / beta / L_inf.
Each replicate is refit from the full-data estimate with the full-data Huber scale.
"""

from __future__ import annotations

import numpy as np

from . import _solver
from ._data import Observations

SCHEME_SEEDS = "seeds within points, rescaled"
SCHEME_POINTS = "points"


def resample_indices(obs: Observations, n_boot: int, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """Row indices [n_boot, n_obs] of the bootstrap replicates and the scheme used."""
    counts = np.bincount(obs.group)
    if obs.resample_points or counts.max() == 1:
        return rng.integers(0, obs.n_obs, size=(n_boot, obs.n_obs)), SCHEME_POINTS
    index = np.empty((n_boot, obs.n_obs), dtype=np.int64)
    for g in range(obs.n_points):
        rows = np.flatnonzero(obs.group == g)
        index[:, rows] = rows[rng.integers(0, rows.size, size=(n_boot, rows.size))]
    return index, SCHEME_SEEDS


def _rescaler(p: _solver.Problem, obs: Observations, scheme: str):
    """A function rows -> replicate log y [n_obs]; the Rao-Wu rescaling for the seeds scheme."""
    if scheme != SCHEME_SEEDS:
        return lambda rows: p.log_y[rows]
    count = np.bincount(obs.group)
    mean = np.bincount(obs.group, weights=p.log_y) / count
    factor = np.sqrt(count / np.maximum(count - 1, 1))  # a single-run point has no spread to fix
    g = obs.group  # the seeds scheme keeps every row inside its own point
    return lambda rows: mean[g] + factor[g] * (p.log_y[rows] - mean[g])


def run(
    p: _solver.Problem,
    obs: Observations,
    index: np.ndarray,
    scheme: str,
    theta_hat: np.ndarray,
    form: str,
    loss: str,
    f_scale: float,
) -> tuple[np.ndarray, int]:
    """Refit every replicate. Returns (samples [n_ok, 3] of alpha, beta, L_inf; number failed).

    A replicate fails when it holds fewer distinct x than parameters or does not converge.
    """
    k = _solver.n_params(form)
    replicate_log_y = _rescaler(p, obs, scheme)
    samples, failed = [], 0
    for rows in index:
        rep = p.take(rows, replicate_log_y(rows))
        if np.unique(rep.u).size < k:
            failed += 1
            continue
        theta, _, ok = _solver.solve(theta_hat, rep, form, loss, f_scale)
        if not ok:
            failed += 1
            continue
        samples.append(_solver.to_natural(theta, p.x_ref))
    return (np.array(samples) if samples else np.empty((0, 3))), failed


def percentile_ci(values: np.ndarray, level: float) -> tuple[float, float]:
    """Equal-tailed percentile interval; (nan, nan) without samples."""
    if values.size == 0:
        return (float("nan"), float("nan"))
    lo, hi = np.quantile(values, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return (float(lo), float(hi))
