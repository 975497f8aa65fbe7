"""Scaling-law fits with bootstrap uncertainty: L = alpha * x^-beta (+ L_inf).

Method
------
The loss L (test MAE, or the training objective) is modelled along one axis x (training-set size
N, parameter count P, or compute C) as a pure power law L = alpha * x^-beta, or with an
irreducible floor, L = alpha * x^-beta + L_inf. Both are fitted in log space: the residual of a run
is log(y) - log(model), so a 10 % miss counts the same at every scale and multiplicative seed noise
becomes additive. The objective is the Huber loss of those residuals (scipy.optimize.least_squares,
bounded trust-region reflective), whose scale is 1.345 x the MAD-estimated residual spread unless
given (Huber 1964). Bounds: alpha > 0 (fitted as log alpha), beta in [0, 10], 0 <= L_inf < min(y).
Since the offset model is not convex in its parameters, the fit starts from a grid (beta values x
L_inf fractions, intercept set by least squares for each, plus the linear log-log fit) and keeps
the lowest cost.

Uncertainty comes from a percentile bootstrap (Efron & Tibshirani 1993). When the runs carry point
ids, seeds are resampled within each point, so every replicate keeps the full x range; otherwise
rows are resampled. ``compare_forms`` fits both forms, prefers the offset only when AIC and BIC
both do, and reports a likelihood-ratio test whose null (L_inf = 0) lies on the parameter
boundary, hence the 50:50 chi2_0/chi2_1 mixture (Self & Liang 1987). Its verdict calls a power law
supported when R^2 (log space, point means) >= 0.95 over >= 1.5 decades, with >= 4 points, a
monotone decrease and no dominant plateau, and otherwise says which check failed.

Where this comes from
---------------------
- Kaplan et al. 2020, "Scaling Laws for Neural Language Models" (arXiv:2001.08361): power laws in
  N, D and C fitted over several decades.
- Hestness et al. 2017, "Deep Learning Scaling is Predictable, Empirically" (arXiv:1712.00409):
  learning curves in training-set size with a power-law region and an irreducible-error floor.
- Hoffmann et al. 2022, "Training Compute-Optimal Large Language Models" (arXiv:2203.15556),
  approach 3: L(N, D) = E + A/N^alpha + B/D^beta fitted by minimising a Huber loss (delta = 1e-3)
  between predicted and observed log loss, with L-BFGS started from a grid of initialisations.
- Besiroglu et al. 2024, "Chinchilla Scaling: A replication attempt" (arXiv:2404.10102): refitting
  that approach with bootstrap intervals gave different estimates and wider intervals, which is
  why every fit here carries bootstrap CIs.
"""

from .aggregate import ScalingPoints, aggregate_runs
from .compare import FormComparison, Thresholds, compare_forms, verdict
from .power_law import PowerLawFit, band, fit_power_law, predict

__all__ = [
    "FormComparison",
    "PowerLawFit",
    "ScalingPoints",
    "Thresholds",
    "aggregate_runs",
    "band",
    "compare_forms",
    "fit_power_law",
    "predict",
    "verdict",
]
