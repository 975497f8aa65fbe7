"""The trainer end to end on a tiny store: outputs, resume after SIGKILL, 1 vs 2 ranks, AMP."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from crysbench import config as C
from crysbench.testing import synthetic_store
from crysbench.train.config import RunConfig
from crysbench.train.loop import run, run_dir

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return synthetic_store(tmp_path_factory.mktemp("store") / "s", n=64)


def _cfg(store, out, **over) -> RunConfig:
    base = {"data": {"store": str(store), "targets": ["volume_per_atom"], "batch_size": 16},
            "model": {"name": "cgcnn", "size": "xxs"}, "train": {"epochs": 3, "ckpt_every": 2, "threads": 1},
            "out_dir": str(out)}
    return C.from_dict(RunConfig, C._merge(base, over))


def test_run_writes_outputs_and_skips_when_done(store, tmp_path):
    cfg = _cfg(store, tmp_path)
    result = run(cfg, log=lambda m: None)
    folder = run_dir(cfg)
    assert {p.name for p in folder.iterdir()} >= {"config.yaml", "metrics.jsonl", "final.json", "ckpt"}
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[-1])["epoch"] == 3
    m = result["test"]["volume_per_atom"]
    assert m["n"] > 0 and m["mae"] > 0
    tel = result["telemetry"]
    assert tel["flops_per_crystal"] > 0 and tel["graphs_per_s"] > 0 and result["n_params"] > 1000
    assert C.load(RunConfig, folder / "config.yaml") == cfg
    mtime = (folder / "final.json").stat().st_mtime
    assert run(cfg, log=lambda m: None) == result  # finished: skipped, same record
    assert (folder / "final.json").stat().st_mtime == mtime


def test_unknown_target_is_a_clear_error(store, tmp_path):
    with pytest.raises(ValueError, match="not in store"):
        run(_cfg(store, tmp_path, data={"targets": ["band_gap"]}), log=lambda m: None)


def _train_cmd(store, out, *extra):
    return [sys.executable, "-m", "crysbench", "train", "--model", "cgcnn", "--size", "xxs", "--data", str(store),
            "--target", "volume_per_atom", "--epochs", "5", "--batch-size", "16", "--out", str(out),
            "train.ckpt_every=2", "train.threads=1", *extra]


def test_sigkill_then_resume_matches_uninterrupted(store, tmp_path):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    ref = subprocess.run(_train_cmd(store, tmp_path / "a"), env=env, cwd=ROOT, capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr
    proc = subprocess.Popen(_train_cmd(store, tmp_path / "b"), env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while not list((tmp_path / "b").glob("*/ckpt/last.pt")) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (run_b,) = (tmp_path / "b").iterdir()
    assert not (run_b / "final.json").exists(), "the run finished before it could be killed"
    resumed = subprocess.run(_train_cmd(store, tmp_path / "b"), env=env, cwd=ROOT, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed" in resumed.stdout
    (run_a,) = (tmp_path / "a").iterdir()
    fa, fb = (json.loads((r / "final.json").read_text()) for r in (run_a, run_b))
    assert fa["test"] == fb["test"], (fa["test"], fb["test"])
    ha = [json.loads(x) for x in (run_a / "metrics.jsonl").read_text().splitlines()]
    hb = [json.loads(x) for x in (run_b / "metrics.jsonl").read_text().splitlines()]
    assert [h["val_loss"] for h in ha] == [h["val_loss"] for h in hb]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_ranks_match_one_rank(store, tmp_path):
    """Same global batch on 1 and 2 gloo ranks → the same model (transformer: no batch norm)."""
    extra = ["model.name=transformer", "model.size=xxs", "train.epochs=2"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    one = subprocess.run(_train_cmd(store, tmp_path / "one", *extra), env=env, cwd=ROOT, capture_output=True,
                         text=True)
    assert one.returncode == 0, one.stderr
    port = str(_free_port())
    procs = [subprocess.Popen(_train_cmd(store, tmp_path / "two", *extra), cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True,
                              env=dict(env, RANK=str(r), WORLD_SIZE="2", LOCAL_RANK=str(r),
                                       MASTER_ADDR="127.0.0.1", MASTER_PORT=port)) for r in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    (r1,), (r2,) = (tmp_path / "one").iterdir(), (tmp_path / "two").iterdir()
    f1, f2 = (json.loads((r / "final.json").read_text()) for r in (r1, r2))
    assert f2["telemetry"]["world_size"] == 2
    m1, m2 = f1["test"]["volume_per_atom"], f2["test"]["volume_per_atom"]
    assert m2["mae"] == pytest.approx(m1["mae"], rel=1e-4), (m1, m2)
