"""Fit L = alpha * x^-beta (pure) or L = alpha * x^-beta + L_inf (offset) in log space."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import _bootstrap, _solver
from ._data import Observations, check_options, point_stats, validate


@dataclass(frozen=True)
class PowerLawFit:
    """A fitted power law with percentile-bootstrap confidence intervals.

    alpha, l_inf are in the loss's units (l_inf = 0 for the pure form); beta is dimensionless.
    r2_log / rmse_log compare the mean log loss of every point with the curve (seed noise averaged
    out); rmse_log_runs uses every run. aic / bic use the Gaussian log-likelihood of the run-level
    log residuals (n_obs * log(RSS / n_obs) + penalty). decades = log10(x_max / x_min).
    samples: [n_boot, 3] bootstrap draws of (alpha, beta, l_inf); kept out of to_dict().
    """

    form: str
    loss: str
    alpha: float
    beta: float
    l_inf: float
    alpha_ci: tuple[float, float]
    beta_ci: tuple[float, float]
    l_inf_ci: tuple[float, float] | None
    ci: float
    r2_log: float
    rmse_log: float
    rmse_log_runs: float
    aic: float
    bic: float
    n_params: int
    n_obs: int
    n_points: int
    x_min: float
    x_max: float
    decades: float
    f_scale: float
    bootstrap: str
    n_boot: int
    n_boot_failed: int
    seed: int
    samples: np.ndarray = field(repr=False, compare=False)

    def to_dict(self) -> dict:
        """JSON-ready dict of every field except the bootstrap samples (NaN becomes None)."""
        out = {}
        for name in self.__dataclass_fields__:
            if name != "samples":
                out[name] = _jsonable(getattr(self, name))
        return out


def _jsonable(value):
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float | np.floating):
        return None if not np.isfinite(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def fit_power_law(
    x,
    y,
    groups=None,
    form: str = "pure",
    loss: str = "huber",
    *,
    f_scale: float | None = None,
    n_starts: int = 8,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> PowerLawFit:
    """Fit a power law to losses y [n_obs] (> 0) measured at x [n_obs] (> 0) in log space.

    Residuals are log(y) - log(model); ``loss`` is scipy's robust loss on them ("huber" by default,
    "linear" is plain least squares) with scale ``f_scale`` in log units (None: estimated from the
    MAD of a preliminary fit). ``groups`` [n_obs] labels the point each run belongs to (e.g. the x
    value or a point id); with it the bootstrap resamples seeds within points, without it rows.
    ``n_starts`` is the number of beta values in the start grid (x3 L_inf values for "offset").
    """
    check_options(form, loss, ci, n_boot)
    obs = validate(x, y, groups)
    k = _solver.n_params(form)
    if np.unique(obs.x).size < k:
        raise ValueError(
            f"the {form} form has {k} parameters and needs at least {k} distinct x values; "
            f"got {np.unique(obs.x).size}"
        )
    problem = _solver.Problem.from_xy(obs.x, obs.y)
    theta, scale = _solver.fit_full(problem, form, loss, f_scale, max(int(n_starts), 1))
    rng = np.random.default_rng(seed)
    index, scheme = _bootstrap.resample_indices(obs, n_boot, rng)
    samples, failed = _bootstrap.run(problem, obs, index, scheme, theta, form, loss, scale)
    return _assemble(obs, problem, theta, form, loss, scale, samples, failed, scheme, ci, seed)


def _goodness(obs: Observations, problem: _solver.Problem, theta: np.ndarray, k: int) -> dict:
    stats = point_stats(obs)
    pred = _solver.model_log(theta, np.log(stats.x / problem.x_ref))
    ss_res = float(np.sum((stats.log_mean - pred) ** 2))
    ss_tot = float(np.sum((stats.log_mean - stats.log_mean.mean()) ** 2))
    run_res = _solver.residuals(theta, problem)
    rss = max(float(np.sum(run_res**2)), 1e-300)  # a perfect fit must not give log(0)
    n = obs.n_obs
    return {
        "r2_log": 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan"),
        "rmse_log": float(np.sqrt(ss_res / stats.x.size)),
        "rmse_log_runs": float(np.sqrt(rss / n)),
        "aic": float(n * np.log(rss / n) + 2 * k),
        "bic": float(n * np.log(rss / n) + k * np.log(n)),
    }


def _assemble(obs, problem, theta, form, loss, scale, samples, failed, scheme, ci, seed) -> PowerLawFit:
    alpha, beta, l_inf = _solver.to_natural(theta, problem.x_ref)
    k = _solver.n_params(form)
    cis = [_bootstrap.percentile_ci(samples[:, j], ci) for j in range(3)]
    return PowerLawFit(
        form=form,
        loss=loss,
        alpha=float(alpha),
        beta=float(beta),
        l_inf=float(l_inf),
        alpha_ci=cis[0],
        beta_ci=cis[1],
        l_inf_ci=cis[2] if form == "offset" else None,
        ci=ci,
        **_goodness(obs, problem, theta, k),
        n_params=k,
        n_obs=obs.n_obs,
        n_points=obs.n_points,
        x_min=float(obs.x.min()),
        x_max=float(obs.x.max()),
        decades=float(np.log10(obs.x.max() / obs.x.min())),
        f_scale=float(scale),
        bootstrap=scheme,
        n_boot=int(samples.shape[0]),
        n_boot_failed=int(failed),
        seed=int(seed),
        samples=samples,
    )


def _curves(params: np.ndarray, x: np.ndarray) -> np.ndarray:
    """alpha * x^-beta + l_inf for params [..., 3] (alpha, beta, l_inf) -> [..., len(x)]."""
    log_x = np.log(x)
    alpha, beta, l_inf = (params[..., j, None] for j in range(3))
    return np.exp(np.log(alpha) - beta * log_x) + l_inf


def _grid(x) -> np.ndarray:
    arr = np.atleast_1d(np.asarray(x, dtype=np.float64))
    if arr.ndim != 1 or not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError(f"x must be a 1-D array of finite values > 0, got {arr!r}")
    return arr


def predict(fit: PowerLawFit, x) -> np.ndarray:
    """The fitted loss at x [m] (> 0): alpha * x^-beta + l_inf, [m]."""
    return _curves(np.array([fit.alpha, fit.beta, fit.l_inf]), _grid(x))


def band(fit: PowerLawFit, x_grid, ci: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Pointwise percentile band (lower [m], upper [m]) of the curve over the bootstrap samples.

    ``ci`` defaults to the fit's level. The band is of the mean curve, not a prediction interval
    for a single run.
    """
    level = fit.ci if ci is None else ci
    if not 0.0 < level < 1.0:
        raise ValueError(f"ci must be a level in (0, 1), got {level}")
    if fit.samples.shape[0] == 0:
        raise ValueError(
            "this fit has no bootstrap samples (n_boot=0 or all replicates failed); "
            "refit with n_boot > 0 to get a band"
        )
    curves = _curves(fit.samples, _grid(x_grid))
    lo, hi = np.quantile(curves, [(1.0 - level) / 2.0, (1.0 + level) / 2.0], axis=0)
    return lo, hi
