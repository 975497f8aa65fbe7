"""Log-space least-squares core: model, residuals, Jacobian, multi-start (scipy least_squares).

Parameters live in a normalised space so the problem is well conditioned for x from 1e2 to 1e12:
u = log(x / x_ref) with x_ref the geometric mean of x, and theta = (a, beta[, c]) with the model
L(x) = exp(a - beta * u) + c. So alpha = exp(a) * x_ref**beta and L_inf = c.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares

BETA_MAX = 10.0  # exponents beyond this are not scaling laws; the bound keeps starts from wandering
LINF_FRACTIONS = (0.0, 0.5, 0.9)  # L_inf starts as fractions of min(y)
HUBER_FLOOR = 1e-3  # smallest Huber scale (log units); Hoffmann et al. 2022 use delta = 1e-3
HUBER_TUNING = 1.345  # Huber's constant: 95 % efficiency under Gaussian noise
MAD_TO_SIGMA = 1.4826  # MAD of a Gaussian sample -> its standard deviation


@dataclass(frozen=True)
class Problem:
    """One fitting problem in normalised units. u, log_y: [n_obs]; y_min: min(y); x_ref > 0."""

    u: np.ndarray
    log_y: np.ndarray
    y_min: float
    x_ref: float

    @classmethod
    def from_xy(cls, x: np.ndarray, y: np.ndarray, x_ref: float | None = None) -> Problem:
        x_ref = float(np.exp(np.mean(np.log(x)))) if x_ref is None else x_ref
        return cls(np.log(x / x_ref), np.log(y), float(y.min()), x_ref)

    def take(self, index: np.ndarray, log_y: np.ndarray) -> Problem:
        """A bootstrap replicate: the x of rows ``index`` with log losses ``log_y``, same x_ref."""
        return Problem(self.u[index], log_y, float(np.exp(log_y.min())), self.x_ref)


def n_params(form: str) -> int:
    return 2 if form == "pure" else 3


def model_log(theta: np.ndarray, u: np.ndarray) -> np.ndarray:
    """log L(u) for theta = (a, beta) or (a, beta, c)."""
    if theta.size == 2:
        return theta[0] - theta[1] * u
    with np.errstate(divide="ignore"):  # c = 0 gives log(c) = -inf, and logaddexp(z, -inf) = z
        return np.logaddexp(theta[0] - theta[1] * u, np.log(theta[2]))


def _residuals(theta: np.ndarray, p: Problem) -> np.ndarray:
    return p.log_y - model_log(theta, p.u)


def _jacobian(theta: np.ndarray, p: Problem) -> np.ndarray:
    if theta.size == 2:
        return np.column_stack([-np.ones_like(p.u), p.u])
    log_total = model_log(theta, p.u)  # ratios via logs: exp(a - beta u) may overflow mid-search
    share = np.exp(theta[0] - theta[1] * p.u - log_total)
    return np.column_stack([-share, share * p.u, -np.exp(-log_total)])


def bounds(form: str, y_min: float) -> tuple[np.ndarray, np.ndarray]:
    """alpha > 0 is built in (a = log alpha); 0 <= beta <= BETA_MAX; 0 <= L_inf < min(y)."""
    if form == "pure":
        return np.array([-np.inf, 0.0]), np.array([np.inf, BETA_MAX])
    return np.array([-np.inf, 0.0, 0.0]), np.array([np.inf, BETA_MAX, y_min * (1.0 - 1e-9)])


def solve(theta0: np.ndarray, p: Problem, form: str, loss: str, f_scale: float):
    """One bounded trust-region fit from theta0. Returns (theta, robust cost, success)."""
    lb, ub = bounds(form, p.y_min)
    theta0 = np.clip(theta0, lb, np.nextafter(ub, -np.inf))
    res = least_squares(
        _residuals,
        theta0,
        jac=_jacobian,
        bounds=(lb, ub),
        method="trf",
        loss=loss,
        f_scale=f_scale,
        x_scale="jac",
        args=(p,),
    )
    return res.x, float(res.cost), bool(res.success)


def starts(p: Problem, form: str, n_starts: int) -> list[np.ndarray]:
    """Start grid: the linear log-log fit, then beta in [0.05, 2] (x L_inf fractions for offset).

    For each (beta, L_inf) the intercept a is set by least squares, so every start is sensible.
    """
    slope, intercept = np.polyfit(p.u, p.log_y, 1) if np.ptp(p.u) > 0 else (0.0, p.log_y.mean())
    out = [np.array([intercept, min(max(-slope, 0.0), BETA_MAX)] + ([0.0] if form == "offset" else []))]
    fractions = LINF_FRACTIONS if form == "offset" else (None,)
    for beta in np.geomspace(0.05, 2.0, n_starts):
        for frac in fractions:
            if frac is None:
                out.append(np.array([np.mean(p.log_y + beta * p.u), beta]))
            else:
                c = frac * p.y_min
                a = np.mean(np.log(np.exp(p.log_y) - c) + beta * p.u)
                out.append(np.array([a, beta, c]))
    return out


def multistart(
    p: Problem, form: str, loss: str, f_scale: float, n_starts: int, extra: list[np.ndarray] = ()
) -> np.ndarray:
    """Best (lowest robust cost) local solution over the start grid plus ``extra`` starts."""
    best, best_cost = None, np.inf
    for theta0 in [*extra, *starts(p, form, n_starts)]:
        theta, cost, ok = solve(theta0, p, form, loss, f_scale)
        if ok and cost < best_cost:
            best, best_cost = theta, cost
    if best is None:
        raise RuntimeError(f"all {n_starts} starts of the {form} power-law fit failed to converge")
    return best


def robust_scale(residuals: np.ndarray) -> float:
    """Huber scale from residuals: 1.345 x (1.4826 x MAD), floored at HUBER_FLOOR."""
    mad = np.median(np.abs(residuals - np.median(residuals)))
    return max(HUBER_TUNING * MAD_TO_SIGMA * float(mad), HUBER_FLOOR)


def fit_full(p: Problem, form: str, loss: str, f_scale: float | None, n_starts: int):
    """Multi-start fit on all data. Returns (theta, f_scale used).

    With f_scale=None and a robust loss the scale is estimated: the best plain least-squares start
    is refined at HUBER_FLOOR (close to least absolute deviations, so outliers barely pull it), and
    the MAD of its residuals sets the scale of the final multi-start fit.
    """
    if f_scale is not None and not f_scale > 0:
        raise ValueError(f"f_scale must be > 0 (log units), got {f_scale}")
    if loss == "linear":
        return multistart(p, form, loss, 1.0, n_starts), 1.0
    if f_scale is not None:
        return multistart(p, form, loss, float(f_scale), n_starts), float(f_scale)
    plain = multistart(p, form, "linear", 1.0, n_starts)
    first, _, _ = solve(plain, p, form, loss, HUBER_FLOOR)
    scale = robust_scale(_residuals(first, p))
    return multistart(p, form, loss, scale, n_starts, extra=[first, plain]), scale


def residuals(theta: np.ndarray, p: Problem) -> np.ndarray:
    """Public alias: log y - log model, [n_obs]."""
    return _residuals(theta, p)


def to_natural(theta: np.ndarray, x_ref: float) -> np.ndarray:
    """(a, beta[, c]) in normalised units -> (alpha, beta, L_inf) in the caller's units."""
    l_inf = float(theta[2]) if theta.size == 3 else 0.0
    return np.array([np.exp(theta[0] + theta[1] * np.log(x_ref)), theta[1], l_inf])
