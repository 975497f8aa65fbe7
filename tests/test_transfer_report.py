"""Transfer-study report on fake plan folders whose test MAEs the test sets: CI math, paired tests,
best-of rows, skipped unfinished runs, markdown, csv and figures."""

import csv
import json
import math

import numpy as np
import pytest
from scipy import stats

from crysbench.transfer.report import cell_stats, check_spec, collect, report_study, table_markdown

SEEDS = range(5)
FTS = ("cgcnn_log10_g_vrh", "cgcnn_e_form")
SIZES = (100, 800)
# row → mean MAE: mpt is best overall but left out of the best-of row, so that row must pick k_vrh
LEVELS = {"scratch": 1.0, "cgcnn_log10_k_vrh": 0.5, "mpt": 0.3, "cgcnn_band_gap": 1.5}
UNFINISHED = {("cgcnn_log10_k_vrh", "cgcnn_e_form", 100, 4), ("scratch", "cgcnn_log10_g_vrh", 800, 2)}
PAIR = {"name": "pair-matrix", "title": "Pair-wise transfer", "rows": "pt", "cols": "ft", "facet": "ft_size",
        "select": {"role": ["finetune", "scratch"]}, "baseline": {"pt": "scratch"},
        "best_of": {"key": "pt", "exclude": ["scratch", "mpt"], "label": "best pair-wise"}, "heatmap": True}
BARS = {"name": "bars", "rows": "pt", "cols": "ft", "col_order": list(reversed(FTS)),
        "select": {"ft_size": [800], "role": ["finetune", "scratch"]}}


def _run(tmp_path, i, role, labels, seed, mae):
    """One plan run; its final.json is written unless mae is None (an unfinished run)."""
    target = labels.get("ft", "cgcnn_log10_k_vrh")
    run = {"run_id": f"r{i:04d}", "stage": int(role != "pretrain"), "role": role, "labels": labels,
           "axis_value": str(labels), "seed": seed,
           "config": {"out_dir": str(tmp_path / "runs"), "data": {"targets": [target, "other"]}}}
    if mae is not None:
        d = tmp_path / "runs" / run["run_id"]
        d.mkdir(parents=True)
        test = {target: {"n": 50, "mae": mae, "rmse": 1.3 * mae, "r2": 1 - mae / 2, "mae_mean_baseline": 2.0},
                "other": {"n": 50, "mae": 99.0, "rmse": 99.0, "r2": -1.0, "mae_mean_baseline": 2.0}}
        (d / "final.json").write_text(json.dumps({"test": test}))
    return run


def make_study(tmp_path, tables, seeds=SEEDS, unfinished=UNFINISHED):
    """Fake pair-wise study; returns (plan_dir, {(pt, ft, size, seed): mae of finished runs})."""
    rng = np.random.default_rng(0)
    runs, maes = [], {}
    for seed in seeds:
        labels = {"pt": "cgcnn_log10_k_vrh", "seed": seed}
        runs.append(_run(tmp_path, len(runs), "pretrain", labels, seed, 0.1))
    for pt, level in LEVELS.items():
        for ft in FTS:
            for size in SIZES:
                for seed in seeds:
                    mae = None if (pt, ft, size, seed) in unfinished else level + 0.05 * rng.standard_normal()
                    # scratch runs carry no "pt" label: their row is named by their role
                    role = "scratch" if pt == "scratch" else "finetune"
                    labels = {"ft": ft, "ft_size": size, "seed": seed}
                    labels |= {} if pt == "scratch" else {"pt": pt}
                    runs.append(_run(tmp_path, len(runs), role, labels, seed, mae))
                    if mae is not None:
                        maes[pt, ft, size, seed] = mae
    plan_dir = tmp_path / "plan"
    plan_dir.mkdir()
    plan = {"study": "pairwise", "command": "python -m crysbench transfer pairwise --fake",
            "meta": {"tables": tables}, "runs": runs}
    (plan_dir / "plan.json").write_text(json.dumps(plan))
    return plan_dir, maes


def _cell(cells, facet, row, col):
    (c,) = [c for c in cells if (c["facet"], c["row"], c["col"]) == (facet, row, col)]
    return c


@pytest.fixture
def study(tmp_path):
    plan_dir, maes = make_study(tmp_path, [PAIR, BARS])
    return plan_dir, maes, cell_stats(collect(json.loads((plan_dir / "plan.json").read_text())), PAIR)


def test_ci_matches_student_t(study):
    _, maes, cells = study
    for facet, row, col, n in [(800, "cgcnn_log10_k_vrh", FTS[0], 5), (100, "cgcnn_log10_k_vrh", FTS[1], 4)]:
        x = np.array([maes[row, col, facet, s] for s in SEEDS if (row, col, facet, s) in maes])
        half = stats.t.ppf(0.975, n - 1) * x.std(ddof=1) / math.sqrt(n)
        c = _cell(cells, facet, row, col)
        assert (c["n"], c["no_ci"]) == (n, False)
        assert c["mae_mean"] == pytest.approx(x.mean(), rel=1e-12)
        assert c["mae_ci"] == pytest.approx(half, rel=1e-12)
        r2 = 1 - x / 2
        r2_half = stats.t.ppf(0.975, n - 1) * r2.std(ddof=1) / math.sqrt(n)
        assert c["r2_ci"] == pytest.approx(r2_half, rel=1e-12)


def test_paired_test_matches_scipy(study):
    _, maes, cells = study
    for facet, col in [(100, FTS[0]), (800, FTS[0]), (100, FTS[1])]:
        row = "cgcnn_log10_k_vrh"
        common = [s for s in SEEDS if (row, col, facet, s) in maes and ("scratch", col, facet, s) in maes]
        a = np.array([maes[row, col, facet, s] for s in common])
        b = np.array([maes["scratch", col, facet, s] for s in common])
        c = _cell(cells, facet, row, col)
        assert c["n_paired"] == len(common)
        assert c["p_value"] == pytest.approx(stats.ttest_rel(a, b).pvalue, rel=1e-10)
        assert c["d_mae_pct"] == pytest.approx(100 * (a.mean() / b.mean() - 1), rel=1e-12)
        assert c["ratio"] == pytest.approx(a.mean() / b.mean(), rel=1e-12)
    assert _cell(cells, 800, "scratch", FTS[0])["n_paired"] == 4  # its own unfinished seed is skipped


def test_best_of_row_picks_lowest_eligible_row(study):
    _, _, cells = study
    derived = [c for c in cells if c["derived"]]
    assert len(derived) == len(SIZES) * len(FTS)
    for d in derived:
        src = _cell(cells, d["facet"], "cgcnn_log10_k_vrh", d["col"])
        assert d["row"] == "best pair-wise" and d["best_row"] == "cgcnn_log10_k_vrh"
        assert d["label"] == "best pair-wise (cgcnn_log10_k_vrh)"
        assert (d["mae_mean"], d["p_value"], d["is_best"]) == (src["mae_mean"], src["p_value"], False)
        assert _cell(cells, d["facet"], "mpt", d["col"])["is_best"]  # mpt wins, but is left out of best-of
    assert [c["row"] for c in cells if c["facet"] == 100 and c["col"] == FTS[0]] == [
        "scratch", "cgcnn_band_gap", "cgcnn_log10_k_vrh", "mpt", "best pair-wise"]


def test_report_files(study, tmp_path):
    plan_dir, maes, _ = study
    out = tmp_path / "results"
    rep = report_study(plan_dir, out)
    n_planned = len(SEEDS) * (1 + len(LEVELS) * len(FTS) * len(SIZES))
    assert f"{n_planned - len(UNFINISHED)} of {n_planned} runs finished" in rep["text"]
    assert "Made by `python -m crysbench transfer pairwise --fake`" in rep["text"]
    assert "95% CI" in rep["text"] and "## Pair-wise transfer" in rep["text"]
    assert (out / "summary.md").read_text() == rep["text"]
    for name in ("pair-matrix", "bars"):
        assert (out / f"{name}.png").stat().st_size > 1000
        assert (out / f"{name}.md").read_text() in rep["text"]
    # the csv reads back with the numbers of the returned cells
    rows = list(csv.DictReader((out / "pair-matrix.csv").open()))
    assert len(rows) == len(rep["tables"]["pair-matrix"])
    for row, cell in zip(rows, rep["tables"]["pair-matrix"], strict=True):
        assert (row["row"], row["col"], int(row["n"])) == (str(cell["row"]), cell["col"], cell["n"])
        for key in ("mae_mean", "mae_ci", "r2_mean", "p_value", "d_mae_pct"):
            assert float(row[key]) == pytest.approx(cell[key], rel=1e-12, nan_ok=True)
    # markdown: the best row (mpt) of each column in bold, the scratch row marked as the baseline
    md = (out / "pair-matrix.md").read_text()
    mpt_line = next(line for line in md.splitlines() if line.startswith("| mpt |"))
    assert mpt_line.count("**") == 2 * len(FTS)
    assert "**" not in next(line for line in md.splitlines() if line.startswith("| scratch |"))
    assert "baseline" in md and "| best pair-wise (cgcnn_log10_k_vrh) |" in md
    k_vrh = _cell(rep["tables"]["pair-matrix"], 800, "cgcnn_log10_k_vrh", FTS[0])
    assert f"−{abs(k_vrh['d_mae_pct']):.0f}% p={k_vrh['p_value']:.2g}" in md
    assert f"{k_vrh['mae_mean']:.3f} ± {k_vrh['mae_ci']:.3f} (n=5)" in md
    # the bar table: no facet, col_order respected, only size-800 runs selected
    bars = rep["tables"]["bars"]
    assert [c["col"] for c in bars][:2] == list(reversed(FTS)) and {c["facet"] for c in bars} == {None}
    assert f"{len(LEVELS) * len(FTS) * len(SEEDS) - 1} of {len(LEVELS) * len(FTS) * len(SEEDS)} selected" \
        in rep["text"]


def test_single_seed_has_no_ci(tmp_path):
    plan_dir, _ = make_study(tmp_path, [PAIR, BARS | {"name": "bars1"}], seeds=[7], unfinished=set())
    out = tmp_path / "results"
    rep = report_study(plan_dir, out)
    cells = rep["tables"]["pair-matrix"]
    assert all(c["n"] == 1 and c["no_ci"] and math.isnan(c["mae_ci"]) for c in cells)
    assert all(math.isnan(c["p_value"]) and c["n_paired"] == 1 for c in cells)
    md = (out / "pair-matrix.md").read_text()
    assert "(n=1, no CI)" in md and "p n/a" in md and "±" not in md
    assert (out / "pair-matrix.png").stat().st_size > 1000 and (out / "bars1.png").stat().st_size > 1000


def test_no_finished_runs_and_bad_specs(tmp_path):
    everything = {(pt, ft, size, s) for pt in LEVELS for ft in FTS for size in SIZES for s in SEEDS}
    plan_dir, _ = make_study(tmp_path, [PAIR], unfinished=everything)
    rep = report_study(plan_dir, tmp_path / "results")
    assert rep["tables"] == {"pair-matrix": []} and "no finished runs" in rep["text"]
    assert not (tmp_path / "results" / "pair-matrix.png").exists()
    with pytest.raises(ValueError, match="lacks"):
        check_spec({"name": "x", "rows": "pt"})
    with pytest.raises(ValueError, match="unknown keys"):
        check_spec({"name": "x", "rows": "pt", "cols": "ft", "colour": "red"})
    with pytest.raises(ValueError, match="row key"):
        check_spec({"name": "x", "rows": "pt", "cols": "ft", "baseline": {"ft": "scratch"}})
    with pytest.raises(ValueError, match="plain file name"):
        check_spec({"name": "../x", "rows": "pt", "cols": "ft"})


def test_best_of_source_differs_per_column():
    levels = [("a", "x", 0.2), ("a", "y", 0.9), ("b", "x", 0.8), ("b", "y", 0.3)]
    recs = [{"role": "finetune", "labels": {"pt": pt, "ft": ft}, "seed": s, "mae": mae + 0.01 * s, "r2": 0.5,
             "mae_mean_baseline": 2.0} for pt, ft, mae in levels for s in (0, 1)]
    spec = {"name": "t", "rows": "pt", "cols": "ft", "best_of": {"key": "pt", "label": "best"}}
    cells = cell_stats(recs, spec)
    assert {c["col"]: c["best_row"] for c in cells if c["derived"]} == {"x": "a", "y": "b"}
    best_line = next(line for line in table_markdown(cells, spec).splitlines() if line.startswith("| best |"))
    assert "; via a" in best_line and "; via b" in best_line


def test_columns_keep_their_order_when_the_first_row_lacks_one():
    """The computed→experimental table: "exp-only" has no 0% column, the others do; 0.0 must stay first."""
    cells_in = [("exp-only", 0.2), ("exp-only", 0.8), ("vanilla", 0.0), ("vanilla", 0.2), ("vanilla", 0.8)]
    recs = [{"role": "finetune", "labels": {"approach": a, "ft_frac": f}, "seed": s, "mae": 0.5 + 0.01 * s,
             "r2": 0.5, "mae_mean_baseline": 2.0} for a, f in cells_in for s in (0, 1)]
    spec = {"name": "t", "rows": "approach", "cols": "ft_frac", "row_order": ["exp-only", "vanilla"]}
    header = table_markdown(cell_stats(recs, spec), spec).splitlines()
    header = next(line for line in header if line.startswith("| approach"))
    assert header.split("|")[2:5] == [" 0.0 ", " 0.2 ", " 0.8 "]
