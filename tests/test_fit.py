"""Scaling-law fits: recovery of known exponents, CI coverage, robustness, form choice, verdicts."""

from __future__ import annotations

import json

import numpy as np
import pytest

from crysbench.fit import (
    PowerLawFit,
    aggregate_runs,
    band,
    compare_forms,
    fit_power_law,
    predict,
)


def synth(alpha, beta, l_inf=0.0, decades=2.0, n_points=8, n_seeds=5, sigma=0.05, seed=0, x0=1e2):
    """Runs at n_points log-spaced x with multiplicative log-normal noise: (x, y, groups) [n_obs]."""
    rng = np.random.default_rng(seed)
    xs = np.geomspace(x0, x0 * 10**decades, n_points)
    x = np.repeat(xs, n_seeds)
    y = (alpha * x**-beta + l_inf) * np.exp(rng.normal(0.0, sigma, x.size))
    return x, y, np.repeat(np.arange(n_points), n_seeds)


def covers(ci, truth) -> bool:
    return ci[0] <= truth <= ci[1]


# --- recovery -------------------------------------------------------------------------------------


def test_recovers_pure_power_law():
    x, y, g = synth(2.0, 0.3, decades=2.5, seed=1)
    fit = fit_power_law(x, y, groups=g, form="pure", n_boot=300, seed=0)
    assert abs(fit.beta - 0.3) < 0.02, fit
    assert abs(fit.alpha / 2.0 - 1) < 0.1, fit
    assert covers(fit.beta_ci, 0.3) and covers(fit.alpha_ci, 2.0), (fit.beta_ci, fit.alpha_ci)
    assert fit.beta_ci[1] - fit.beta_ci[0] < 0.05, "CI far wider than the noise warrants"
    assert fit.l_inf == 0.0 and fit.l_inf_ci is None
    assert fit.r2_log > 0.99 and fit.n_points == 8 and fit.n_obs == 40
    assert fit.decades == pytest.approx(2.5)
    assert fit.bootstrap.startswith("seeds within points") and fit.n_boot == 300


def test_recovers_offset_power_law():
    x, y, g = synth(5.0, 0.5, l_inf=0.1, decades=3.0, seed=2)
    fit = fit_power_law(x, y, groups=g, form="offset", n_boot=300, seed=0)
    assert abs(fit.beta - 0.5) < 0.05, fit
    assert abs(fit.l_inf - 0.1) < 0.01, fit
    for name, truth in [("alpha", 5.0), ("beta", 0.5), ("l_inf", 0.1)]:
        ci = getattr(fit, f"{name}_ci")
        assert covers(ci, truth), f"{name}: CI {ci} misses {truth}"
    assert 0.0 <= fit.l_inf < y.min()


def test_x_units_only_rescale_alpha():
    """Fitting x or 1e6 * x gives the same beta, and alpha' = alpha * 1e6^beta (normalisation is exact)."""
    x, y, g = synth(2.0, 0.3, seed=3)
    a = fit_power_law(x, y, g, n_boot=0)
    b = fit_power_law(x * 1e6, y, g, n_boot=0)
    assert b.beta == pytest.approx(a.beta, rel=1e-6)
    assert b.alpha == pytest.approx(a.alpha * 1e6**a.beta, rel=1e-5)


def test_ci_coverage_over_repetitions():
    """Nominal 95 % beta intervals cover the truth in >= 80 % of 30 seeded studies (4 seeds/point)."""
    hits, widths = [], []
    for rep in range(30):
        x, y, g = synth(2.0, 0.3, decades=2.0, n_points=6, n_seeds=4, sigma=0.1, seed=100 + rep)
        fit = fit_power_law(x, y, g, n_boot=100, n_starts=2, seed=rep)
        hits.append(covers(fit.beta_ci, 0.3))
        widths.append(fit.beta_ci[1] - fit.beta_ci[0])
    assert np.mean(hits) >= 0.8, f"coverage {np.mean(hits):.2f} < 0.8"
    # sd of beta-hat here is ~0.015, so an honest 95 % interval is ~0.06 wide, not 0.2
    assert np.mean(widths) < 0.1, f"intervals too wide to be informative: {np.mean(widths):.3f}"


# --- robustness -----------------------------------------------------------------------------------


def test_huber_resists_one_wild_point():
    rng = np.random.default_rng(3)
    x = np.geomspace(1e2, 1e4, 12)
    y = 2.0 * x**-0.3 * np.exp(rng.normal(0.0, 0.03, x.size))
    wild = y.copy()
    wild[-1] *= 3.0  # one run at the largest x diverged
    shift = {
        loss: fit_power_law(x, wild, loss=loss, n_boot=0).beta - fit_power_law(x, y, loss=loss, n_boot=0).beta
        for loss in ("huber", "linear")
    }
    assert abs(shift["huber"]) < 0.03, shift
    assert abs(shift["linear"]) > 0.07, shift
    assert abs(shift["linear"]) > 3 * abs(shift["huber"]), shift


def test_deterministic_with_seed():
    x, y, g = synth(2.0, 0.3, seed=4)
    a = fit_power_law(x, y, g, n_boot=50, seed=7)
    b = fit_power_law(x, y, g, n_boot=50, seed=7)
    c = fit_power_law(x, y, g, n_boot=50, seed=8)
    assert a.to_dict() == b.to_dict()
    np.testing.assert_array_equal(a.samples, b.samples)
    assert a.beta_ci != c.beta_ci


def test_single_run_groups_fall_back_to_point_resampling():
    x, y, _ = synth(2.0, 0.3, n_seeds=1, n_points=10, seed=5)
    fit = fit_power_law(x, y, groups=np.arange(x.size), n_boot=50)
    assert fit.bootstrap == "points" and fit.n_boot + fit.n_boot_failed == 50
    assert fit.beta_ci[0] < fit.beta_ci[1]


# --- comparison and verdicts ----------------------------------------------------------------------


def test_offset_preferred_when_plateau():
    x, y, g = synth(5.0, 0.5, l_inf=0.1, decades=3.0, seed=6)
    cmp = compare_forms(x, y, g, axis="N", n_boot=50)
    assert cmp.preferred == "offset" and cmp.delta_aic > 10 and cmp.delta_bic > 10
    assert cmp.lr_pvalue < 1e-3 and "improves the fit" in cmp.statement
    v = cmp.verdict
    assert not v["supported"] and v["form"] == "offset"
    assert v["reason"].startswith("plateau: L_inf = 0.1") and "largest N" in v["reason"]
    assert v["plateau_share"] > 0.5


def test_pure_preferred_without_plateau():
    x, y, g = synth(2.0, 0.3, decades=2.5, seed=7)
    cmp = compare_forms(x, y, g, axis="N", n_boot=50)
    assert cmp.preferred == "pure" and cmp.best is cmp.pure
    assert cmp.delta_bic < 0 and cmp.lr_pvalue > 0.05
    assert "does not significantly improve" in cmp.statement
    v = cmp.verdict
    assert v["supported"], v
    assert v["reason"].startswith("power law supported: R^2 = ") and "2.5 decades of N" in v["reason"]


def test_verdict_too_few_points():
    x, y, g = synth(2.0, 0.3, n_points=3, decades=2.0, seed=8)
    v = compare_forms(x, y, g, axis="N", n_boot=20).verdict
    assert not v["supported"] and v["n_points"] == 3
    assert "too few points: 3 N values (need >= 4)" in v["reason"]
    two = compare_forms(x[g < 2], y[g < 2], g[g < 2], axis="N", n_boot=20)
    assert two.offset is None and "offset form needs >= 3 distinct N" in two.statement
    assert "too few points: 2 N values" in two.verdict["reason"]
    json.dumps(two.to_dict(), allow_nan=False)


def test_verdict_too_narrow_range():
    x, y, g = synth(2.0, 0.3, decades=1.1, seed=9)
    v = compare_forms(x, y, g, axis="N", n_boot=20).verdict
    assert not v["supported"]
    assert "only 1.1 decades of N (need >= 1.5)" in v["reason"], v["reason"]


def test_verdict_non_monotone():
    x, y, g = synth(2.0, 0.3, decades=2.0, n_points=6, seed=10)
    y[g == 3] *= 1.6  # the fourth point is much worse than its neighbours
    v = compare_forms(x, y, g, axis="N", n_boot=20).verdict
    assert not v["supported"]
    assert "non-monotone: mean loss rises by" in v["reason"], v["reason"]


def test_verdict_flat_loss():
    x, y, g = synth(1.0, 0.0, decades=2.0, seed=11)
    v = compare_forms(x, y, g, axis="P", n_boot=50).verdict
    assert not v["supported"] and "no clear decrease" in v["reason"], v["reason"]


# --- helpers for the report -----------------------------------------------------------------------


def test_predict_and_band():
    x, y, g = synth(2.0, 0.3, decades=2.0, seed=12)
    fit = fit_power_law(x, y, g, n_boot=200)
    grid = np.geomspace(1e2, 1e5, 7)  # the last decade is extrapolation
    np.testing.assert_allclose(predict(fit, grid), fit.alpha * grid**-fit.beta)
    lo, hi = band(fit, grid)
    assert lo.shape == hi.shape == grid.shape and np.all(lo < hi)
    assert np.all(lo <= predict(fit, grid)) and np.all(predict(fit, grid) <= hi)
    rel = (hi - lo) / predict(fit, grid)
    assert rel[-1] > rel[2], "the band should widen when extrapolating"
    with pytest.raises(ValueError, match="no bootstrap samples"):
        band(fit_power_law(x, y, g, n_boot=0), grid)


def test_to_dict_is_json():
    x, y, g = synth(5.0, 0.5, l_inf=0.1, seed=13)
    fit = fit_power_law(x, y, g, form="offset", n_boot=20)
    d = json.loads(json.dumps(fit.to_dict(), allow_nan=False))
    assert set(d) == set(PowerLawFit.__dataclass_fields__) - {"samples"}
    assert d["form"] == "offset" and len(d["l_inf_ci"]) == 2
    cmp = compare_forms(x, y, g, n_boot=20)
    json.dumps(cmp.to_dict(), allow_nan=False)


def test_aggregate_runs():
    records = [
        {"x": n, "seed": s, "loss": 1.0 / n + 0.01 * s, "run_id": f"r{n}-{s}"}
        for n in (100, 1000, 10000)
        for s in range(3)
    ]
    pts = aggregate_runs(records)
    np.testing.assert_array_equal(pts.x, [100, 1000, 10000])
    np.testing.assert_array_equal(pts.count, [3, 3, 3])
    np.testing.assert_allclose(pts.mean, [0.02, 0.011, 0.0101])
    np.testing.assert_allclose(pts.std, [0.01, 0.01, 0.01])
    x, y, g = pts.fit_arrays()
    assert x.shape == y.shape == g.shape == (9,) and set(g) == {0, 1, 2}
    assert pts.rows()[0] == {"x": 100.0, "mean": pytest.approx(0.02), "std": pytest.approx(0.01), "count": 3}


@pytest.mark.parametrize(
    "records, message",
    [
        ([], "no run records"),
        ([{"x": 10, "loss": 1.0}], "record 0 has no 'seed' field"),
        ([{"x": 10, "seed": 0}], "record 0 has no 'loss' field"),
        ([{"x": 10, "seed": 0, "loss": float("nan"), "run_id": "abc"}], r"record 0 \(run_id 'abc'\): 'loss'"),
        ([{"x": -1, "seed": 0, "loss": 1.0}], "'x' = -1.0 must be finite and > 0"),
        ([{"x": 10, "seed": 0, "loss": 1.0}, {"x": 10, "seed": 0, "loss": 2.0}], "records 0 and 1 both"),
    ],
)
def test_aggregate_rejects_bad_records(records, message):
    with pytest.raises(ValueError, match=message):
        aggregate_runs(records)


# --- bad input ------------------------------------------------------------------------------------

GOOD_X, GOOD_Y = np.geomspace(10, 1e4, 6), np.geomspace(1.0, 0.1, 6)


@pytest.mark.parametrize(
    "x, y, kwargs, message",
    [
        (np.r_[0.0, GOOD_X[1:]], GOOD_Y, {}, "x must be > 0.*index 0"),
        (GOOD_X, np.r_[GOOD_Y[:2], -1.0, GOOD_Y[3:]], {}, "y must be > 0.*index 2"),
        (GOOD_X, np.r_[GOOD_Y[:5], np.nan], {}, "y has 1 non-finite value.*index 5"),
        (GOOD_X, GOOD_Y[:5], {}, "same length, got 6 and 5"),
        (GOOD_X.reshape(2, 3), GOOD_Y.reshape(2, 3), {}, "x must be 1-D"),
        (GOOD_X, GOOD_Y, {"groups": [0, 1, 2]}, "one label per observation"),
        (GOOD_X, GOOD_Y, {"groups": [0, 0, 1, 1, 2, 2]}, "mixes several x values"),
        (GOOD_X, GOOD_Y, {"form": "exp"}, "form must be one of"),
        (GOOD_X, GOOD_Y, {"loss": "l2"}, "loss must be one of"),
        (GOOD_X, GOOD_Y, {"ci": 95}, r"ci must be a level in \(0, 1\)"),
        (GOOD_X, GOOD_Y, {"f_scale": 0.0}, "f_scale must be > 0"),
        (GOOD_X[:2], GOOD_Y[:2], {"form": "offset"}, "needs at least 3 distinct x"),
        (["a"] * 6, GOOD_Y, {}, "x must be numeric"),
    ],
)
def test_bad_input_raises(x, y, kwargs, message):
    with pytest.raises(ValueError, match=message):
        fit_power_law(x, y, n_boot=0, **kwargs)


def test_compare_needs_two_x_values():
    with pytest.raises(ValueError, match="at least 2 distinct N values"):
        compare_forms([10.0, 10.0], [1.0, 1.1], axis="N")
