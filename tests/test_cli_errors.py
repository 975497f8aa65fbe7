"""Bad input on the command line ends with one clear line on stderr and exit status 2, not a traceback."""

import os
import subprocess
import sys

from crysbench.testing import synthetic_store


def _cli(*args, env=None, cwd=None):
    return subprocess.run([sys.executable, "-m", "crysbench", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=cwd, timeout=300)


def test_missing_plan_is_one_line(tmp_path):
    out = _cli("transfer", "status", str(tmp_path / "nothing"))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    plan = tmp_path / "nothing" / "plan.json"
    assert f"crysbench: error: FileNotFoundError: {plan}: no plan here" in out.stderr
    debug = _cli("transfer", "status", str(tmp_path / "nothing"), env={"CRYSBENCH_TRACEBACK": "1"})
    assert debug.returncode == 1 and "Traceback" in debug.stderr


def test_not_a_store_and_unknown_config_key(tmp_path):
    out = _cli("train", "--model", "cgcnn", "--data", str(tmp_path / "nostore"), cwd=tmp_path)
    assert out.returncode == 2 and "StoreError" in out.stderr and "no manifest.json" in out.stderr
    assert "Traceback" not in out.stderr
    store = synthetic_store(tmp_path / "s", n=20)
    out = _cli("train", "--model", "cgcnn", "--data", str(store), "train.no_such_knob=3", cwd=tmp_path)
    assert out.returncode == 2 and "no_such_knob" in out.stderr and "Traceback" not in out.stderr
