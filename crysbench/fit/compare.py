"""Pure vs offset power law: information criteria, a boundary likelihood-ratio test, a verdict."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import chi2

from ._data import PointStats, point_stats, validate
from .power_law import PowerLawFit, _jsonable, fit_power_law, predict


@dataclass(frozen=True)
class Thresholds:
    """When a power law counts as supported (see ``verdict``)."""

    min_r2: float = 0.95  # R^2 of point-mean log loss against the preferred curve
    min_decades: float = 1.5  # log10(x_max / x_min)
    min_points: int = 4  # distinct x values
    max_plateau: float = 0.5  # L_inf / L(x_max) above this: the loss is mostly plateau


@dataclass(frozen=True)
class FormComparison:
    """Both fits, which one is preferred, and the verdict.

    delta_aic, delta_bic: criterion of the pure form minus that of the offset form (> 0 favours the
    offset). lr_stat: n_obs * log(RSS_pure / RSS_offset); lr_pvalue under the 50:50 mixture of
    chi2_0 and chi2_1 that holds because L_inf = 0 lies on the boundary (Self & Liang 1987).
    """

    pure: PowerLawFit
    offset: PowerLawFit | None
    preferred: str
    delta_aic: float
    delta_bic: float
    lr_stat: float
    lr_pvalue: float
    statement: str
    verdict: dict

    @property
    def best(self) -> PowerLawFit:
        return self.offset if self.preferred == "offset" else self.pure

    def to_dict(self) -> dict:
        return {
            "pure": self.pure.to_dict(),
            "offset": self.offset.to_dict() if self.offset else None,
            "preferred": self.preferred,
            "delta_aic": _jsonable(self.delta_aic),
            "delta_bic": _jsonable(self.delta_bic),
            "lr_stat": _jsonable(self.lr_stat),
            "lr_pvalue": _jsonable(self.lr_pvalue),
            "statement": self.statement,
            "verdict": self.verdict,
        }


def compare_forms(
    x,
    y,
    groups=None,
    *,
    axis: str = "x",
    loss: str = "huber",
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    n_starts: int = 8,
    f_scale: float | None = None,
    thresholds: Thresholds = Thresholds(),
) -> FormComparison:
    """Fit the pure and the offset form to the same runs, pick one, and judge the scaling law.

    The offset form is preferred only when both AIC and BIC favour it (parsimony otherwise).
    ``axis`` names x in the messages ("N", "P", "C"). Needs >= 2 distinct x (3 for the offset form).
    """
    obs = validate(x, y, groups)
    n_x = np.unique(obs.x).size
    if n_x < 2:
        raise ValueError(f"need at least 2 distinct {axis} values to fit a power law, got {n_x}")
    kw = dict(groups=groups, loss=loss, n_boot=n_boot, seed=seed, ci=ci, n_starts=n_starts, f_scale=f_scale)
    pure = fit_power_law(x, y, form="pure", **kw)
    offset = fit_power_law(x, y, form="offset", **kw) if n_x >= 3 else None
    if offset is None:
        d_aic = d_bic = lr = p_value = float("nan")
        preferred = "pure"
        statement = f"only the pure form was fitted: the offset form needs >= 3 distinct {axis} values"
    else:
        d_aic, d_bic = pure.aic - offset.aic, pure.bic - offset.bic
        lr = max(d_aic + 2.0, 0.0)  # AIC_p - AIC_o = n log(RSS_p / RSS_o) - 2
        p_value = float(0.5 * chi2.sf(lr, 1)) if lr > 0 else 1.0
        preferred = "offset" if d_aic > 0 and d_bic > 0 else "pure"
        statement = _statement(preferred, offset, d_aic, d_bic, lr, p_value)
    best = offset if preferred == "offset" else pure
    verdict_ = verdict(best, point_stats(obs), d_aic, axis, thresholds)
    return FormComparison(
        pure, offset, preferred, float(d_aic), float(d_bic), float(lr), float(p_value), statement, verdict_
    )


def _statement(
    preferred: str, offset: PowerLawFit, d_aic: float, d_bic: float, lr: float, p_value: float
) -> str:
    lo, hi = offset.l_inf_ci
    head = (
        f"{preferred} form preferred: dAIC = {d_aic:+.1f}, dBIC = {d_bic:+.1f} (pure minus offset; "
        f"> 0 favours the offset)"
    )
    if preferred == "pure" and d_aic > 0:
        head += "; AIC and BIC disagree, so the simpler pure form is kept"
    effect = "improves" if p_value < 0.05 else "does not significantly improve"
    return (
        f"{head}. The offset term L_inf = {offset.l_inf:.4g} [{lo:.4g}, {hi:.4g}] {effect} the fit: "
        f"likelihood-ratio statistic {lr:.2f}, p = {p_value:.2g} (50:50 chi2_0/chi2_1 mixture, "
        f"Gaussian approximation in log space)"
    )


def _rises(stats: PointStats, sigma_run: float) -> list[tuple[int, float, float]]:
    """Steps i -> i+1 where the mean log loss rises by more than 2 standard errors.

    Points with a single run take sigma_run (the fit's run-level log RMSE) as their spread.
    Returns (i, rise in log units, threshold).
    """
    se = np.where(np.isfinite(stats.log_se), stats.log_se, sigma_run / np.sqrt(stats.count))
    out = []
    for i in range(stats.x.size - 1):
        rise = stats.log_mean[i + 1] - stats.log_mean[i]
        limit = 2.0 * float(np.hypot(se[i], se[i + 1]))
        if rise > limit:
            out.append((i, float(rise), limit))
    return out


def _reasons(best: PowerLawFit, stats: PointStats, d_aic: float, axis: str, t: Thresholds) -> list[str]:
    reasons = []
    if stats.x.size < t.min_points:
        reasons.append(f"too few points: {stats.x.size} {axis} values (need >= {t.min_points})")
    rises = _rises(stats, best.rmse_log_runs)
    if rises:
        i, rise, _ = max(rises, key=lambda r: r[1])
        reasons.append(
            f"non-monotone: mean loss rises by {np.expm1(rise):.0%} from {axis} = "
            f"{stats.x[i]:.3g} to {stats.x[i + 1]:.3g} (more than 2 standard errors); "
            f"{len(rises)} of {stats.x.size - 1} steps go up significantly"
        )
    if best.beta_ci[0] <= 1e-6:
        reasons.append(
            f"no clear decrease: beta = {best.beta:.3g} and its {best.ci:.0%} CI "
            f"[{best.beta_ci[0]:.3g}, {best.beta_ci[1]:.3g}] reaches 0"
        )
    if best.decades < t.min_decades:
        reasons.append(f"only {best.decades:.1f} decades of {axis} (need >= {t.min_decades})")
    if not best.r2_log >= t.min_r2:
        reasons.append(
            f"poor fit: R^2 = {best.r2_log:.3f} in log space for the {best.form} form (need >= {t.min_r2})"
        )
    share = _plateau_share(best)
    if share is not None and share >= t.max_plateau:
        reasons.append(
            f"plateau: L_inf = {best.l_inf:.4g} explains {share:.0%} of the fitted loss at the "
            f"largest {axis} ({best.x_max:.3g}); the offset form is preferred by "
            f"dAIC = {d_aic:.1f}, so more {axis} buys little"
        )
    return reasons


def _plateau_share(fit: PowerLawFit) -> float | None:
    """L_inf / L(x_max) for an offset fit, else None."""
    if fit.form != "offset":
        return None
    return float(fit.l_inf / predict(fit, [fit.x_max])[0])


def verdict(
    best: PowerLawFit, stats: PointStats, d_aic: float, axis: str = "x", thresholds: Thresholds = Thresholds()
) -> dict:
    """Supported when none of the checks fails; else every failing check in plain words.

    Checks, in order: number of points, monotone decrease (no step up beyond 2 standard errors),
    beta CI away from 0, x-range in decades, R^2 in log space, and plateau share (offset form).
    """
    reasons = _reasons(best, stats, d_aic, axis, thresholds)
    if reasons:
        reason = "; ".join(reasons)
    else:
        lo, hi = best.beta_ci
        reason = (
            f"power law supported: R^2 = {best.r2_log:.3f} in log space over {best.decades:.1f} "
            f"decades of {axis} ({best.form} form, beta = {best.beta:.3g} [{lo:.3g}, {hi:.3g}])"
        )
    return {
        "supported": not reasons,
        "reason": reason,
        "reasons": reasons,
        "form": best.form,
        "r2_log": _jsonable(best.r2_log),
        "decades": best.decades,
        "n_points": int(stats.x.size),
        "beta": best.beta,
        "beta_ci": _jsonable(best.beta_ci),
        "plateau_share": _plateau_share(best),
    }
