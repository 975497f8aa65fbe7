"""The AMP check: fp32 and bf16 runs of one tiny config, compared; the CLI flag end to end."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from crysbench import config as C
from crysbench.testing import synthetic_store
from crysbench.train import ampcheck
from crysbench.train.config import RunConfig

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return synthetic_store(tmp_path_factory.mktemp("store") / "s", n=64)


def _cfg(store, out) -> RunConfig:
    return C.from_dict(RunConfig, {
        "data": {"store": str(store), "targets": ["volume_per_atom", "mean_z"], "batch_size": 16},
        "model": {"name": "cgcnn", "size": "xxs"}, "train": {"epochs": 2, "threads": 1, "seed": 3},
        "out_dir": str(out)})


def test_bf16_check_runs_both_and_differs_a_little(store, tmp_path):
    rec = ampcheck.check_amp(_cfg(store, tmp_path), "bf16", log=lambda m: None)
    assert rec["fp32"]["mixed_precision"] == "none" and rec["amp"]["mixed_precision"] == "bf16"
    assert rec["fp32"]["run_id"] != rec["amp"]["run_id"]
    assert Path(rec["fp32"]["dir"], "final.json").exists() and Path(rec["amp"]["dir"], "final.json").exists()
    assert rec["fp32"]["steps"] == rec["amp"]["steps"] > 0
    for name in ("volume_per_atom", "mean_z"):
        for k in ampcheck.METRICS:
            d = rec["diff"][name][k]
            assert math.isfinite(d["fp32"]) and math.isfinite(d["amp"]), (name, k, d)
        mae = rec["diff"][name]["mae"]
        assert abs(mae["rel"]) < 0.1, (name, mae)  # bf16 changes few-step metrics by well under 10 %
        pred = rec["predictions"][name]
        assert not pred["bitwise_equal"] and pred["max_abs"] > 0, (name, pred)  # two distinct runs
    assert rec["fp32"]["train_time_s"] > 0 and rec["amp"]["train_time_s"] > 0
    assert "rel diff" in ampcheck.format_report(rec)


def test_bad_precision_is_an_error(store, tmp_path):
    with pytest.raises(ValueError, match="bf16 or fp16"):
        ampcheck.check_amp(_cfg(store, tmp_path), "fp8")


def test_unsupported_autocast_gets_a_clear_message(store, tmp_path, monkeypatch):
    def boom(cfg, resume, log):
        if cfg.train.mixed_precision != "none":
            raise RuntimeError('"addmm_impl_cpu_" not implemented for \'Half\'')
        return real(cfg, resume, log)

    real = ampcheck._train
    monkeypatch.setattr(ampcheck, "_train", boom)
    with pytest.raises(ampcheck.AmpUnsupportedError, match="fp16 autocast failed for model 'cgcnn'"):
        ampcheck.check_amp(_cfg(store, tmp_path), "fp16", log=lambda m: None)


def test_cli_flag_writes_json(store, tmp_path):
    cmd = [sys.executable, "-m", "crysbench", "train", "--model", "cgcnn", "--size", "xxs",
           "--data", str(store),
           "--target", "volume_per_atom", "--epochs", "1", "--batch-size", "16", "--out", str(tmp_path),
           "--check-amp", "bf16", "train.threads=1"]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "AMP check cgcnn/xxs" in res.stdout
    (path,) = (tmp_path / "ampcheck").glob("*.json")
    rec = json.loads(path.read_text())
    assert rec["precision"] == "bf16" and set(rec["diff"]) == {"volume_per_atom"}
