"""Sweep planning, local execution, status, fit and report on a tiny synthetic store."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from crysbench import config as C
from crysbench.sweep.plan import SweepConfig, expand, load_plan, powers_of_two, write_plan
from crysbench.sweep.runner import status
from crysbench.testing import synthetic_store
from crysbench.train.config import RunConfig

ROOT = Path(__file__).resolve().parents[1]
TINY = """
seeds: [0, 1]
data_sizes: [12, 24, 48]
base:
  data: {targets: [volume_per_atom], batch_size: 12}
  model: {name: cgcnn, size: xxs}
  train: {epochs: 2, ckpt_every: 2, threads: 1}
"""


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return synthetic_store(tmp_path_factory.mktemp("store") / "s", n=64)


def test_powers_of_two():
    assert powers_of_two(100, 1000) == [128, 256, 512, 1000]
    assert powers_of_two(128, 512) == [128, 256, 512]


def test_axes_expand_to_distinct_runs():
    base = C.from_dict(RunConfig, {"data": {"store": "x"}})
    data = expand(SweepConfig(axis="data", base=base, seeds=(0, 1), data_sizes=(10, 20)))
    assert [(r["axis_value"], r["seed"]) for r in data] == [(10, 0), (10, 1), (20, 0), (20, 1)]
    assert len({r["run_id"] for r in data}) == 4
    params = expand(SweepConfig(axis="params", base=base, seeds=(0,)))
    assert [r["axis_value"] for r in params] == ["xxs", "xs", "s", "m", "l", "xl"]
    comp = expand(SweepConfig(axis="compute", base=base, seeds=(0,), flop_budgets=(1e9, 1e10),
                              model_sizes=("xxs", "xs")))
    assert [r["axis_value"] for r in comp] == [(1e9, "xxs"), (1e9, "xs"), (1e10, "xxs"), (1e10, "xs")]
    assert all(r["config"]["train"]["max_flops"] in (1e9, 1e10) for r in comp)
    with pytest.raises(ValueError, match="flop_budgets"):
        expand(SweepConfig(axis="compute", base=base))


def test_local_sweep_end_to_end(store, tmp_path):
    cfg_file = tmp_path / "tiny.yaml"
    cfg_file.write_text(TINY)
    plan_dir, results = tmp_path / "plan", tmp_path / "results"
    cmd = [sys.executable, "-m", "crysbench", "sweep", "--axis", "data", "--model", "cgcnn", "--data", str(store),
           "--config", str(cfg_file), "--out", str(plan_dir), "--results", str(results), "--n-boot", "100"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert all(r["state"] == "done" for r in status(plan_dir))
    report = results / load_plan(plan_dir)["sweep"]["name"]
    fit = json.loads((report / "fit.json").read_text())
    assert fit["n_runs"] == 6 and set(fit["fits"]) == {"objective", "mae_volume_per_atom"}
    beta = fit["fits"]["objective"]["pure"]["beta"]
    assert beta == beta  # a number, not NaN (the data are too small for a meaningful exponent)
    assert (report / "plot.png").stat().st_size > 1000
    assert "power law" in (report / "summary.md").read_text() or "decades" in (report / "summary.md").read_text()
    rows = (report / "points.csv").read_text().splitlines()
    assert len(rows) == 7 and rows[0].startswith("run_id,")
    # re-running skips every finished point
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "resumed" not in again.stdout
    st = subprocess.run([sys.executable, "-m", "crysbench", "sweep", "status", str(plan_dir)], cwd=ROOT,
                        capture_output=True, text=True)
    assert "done: 6" in st.stdout


def test_failed_point_is_reported_with_its_file(store, tmp_path):
    base = C.from_dict(RunConfig, {"data": {"store": str(store), "targets": ["no_such_target"]},
                                   "train": {"epochs": 1}})
    plan_dir = tmp_path / "plan"
    write_plan(SweepConfig(axis="data", base=base, seeds=(0,), data_sizes=(12,)), plan_dir)
    from crysbench.sweep.runner import run_local

    assert run_local(plan_dir) == [0]
    (row,) = status(plan_dir)
    assert row["state"] == "failed" and "no_such_target" in row["error"]
    assert Path(row["failure_file"]).exists()
