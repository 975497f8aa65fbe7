"""Against a real Slurm (slurm/local-cluster.sh up): sbatch slurm/scaling.sh, the submitit launcher,
and a scancel-then-resume fault test. Skipped when no cluster answers, unless CI requires one."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fixtures import require_slurm

from crysbench.sweep.runner import status
from crysbench.testing import synthetic_store

ROOT = Path(__file__).resolve().parents[1]
TINY = """
seeds: [0, 1]
data_sizes: [12, 24, 48]
base:
  data: {targets: [volume_per_atom], batch_size: 12}
  model: {name: cgcnn, size: xxs}
  train: {epochs: 3, ckpt_every: 1, threads: 1}
"""


require_slurm(module=True)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("slurm")
    store = synthetic_store(d / "store", n=64)
    (d / "tiny.yaml").write_text(TINY)
    return d, store


def _wait_file(path: Path, timeout: float) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        if time.time() > deadline:
            q = subprocess.run(["squeue"], capture_output=True, text=True).stdout
            raise AssertionError(f"{path} did not appear within {timeout:.0f} s; squeue:\n{q}")
        time.sleep(0.5)


def _sweep_cmd(work, plan, *extra):
    d, store = work
    return [sys.executable, "-m", "crysbench", "sweep", "--axis", "data", "--model", "cgcnn", "--data", str(store),
            "--config", str(d / "tiny.yaml"), "--out", str(plan), "--results", str(d / "results"),
            "--n-boot", "100", *extra]


def _metrics(plan: Path) -> dict:
    out = {}
    for r in json.loads((plan / "plan.json").read_text())["runs"]:
        final = json.loads((Path(r["config"]["out_dir"]) / r["run_id"] / "final.json").read_text())
        out[(r["axis_value"], r["seed"])] = final["test"]
    return out


@pytest.fixture(scope="module")
def submitit_sweep(work):
    d, _ = work
    plan = d / "plan-submitit"
    t0 = time.time()
    out = subprocess.run(_sweep_cmd(work, plan, "--launcher", "slurm", "--wait"), cwd=ROOT, capture_output=True,
                         text=True, timeout=900)
    assert out.returncode == 0, out.stdout + out.stderr
    return plan, time.time() - t0, out.stdout


def test_submitit_sweep_runs_array_and_dependent_fit(work, submitit_sweep):
    plan, seconds, stdout = submitit_sweep
    assert "job array" in stdout and "afterok" in stdout
    assert all(r["state"] == "done" for r in status(plan))
    fit = json.loads((work[0] / "results" / "cgcnn-data-quick" / "fit.json").read_text())
    assert fit["n_runs"] == 6
    jobs = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "JobName,State"], capture_output=True, text=True).stdout
    assert "crysbench-fit" in jobs


def test_sbatch_scaling_script(work, submitit_sweep):
    d, store = work
    plan = d / "plan-sbatch"
    env = dict(os.environ, PLAN=str(plan), PYTHON=sys.executable, CRYSBENCH_FIT_ARGS=f"--results {d}/sb --n-boot 100",
               CRYSBENCH_SWEEP_ARGS=f"--data {store} --config {d / 'tiny.yaml'}")
    out = subprocess.run(["sbatch", "--parsable", f"--chdir={d}", f"--output={d}/driver-%j.out",
                          str(ROOT / "slurm" / "scaling.sh")], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    _wait_file(d / "sb" / "cgcnn-data-quick" / "fit.json", timeout=600)
    assert all(r["state"] == "done" for r in status(plan))
    assert _metrics(plan) == _metrics(submitit_sweep[0]), "sbatch and submitit sweeps disagree"


def test_scancel_one_task_then_resume_equals_undisturbed(work):
    """Cancel a running array task mid-training; re-running the sweep resumes it from its checkpoint
    and its result equals an undisturbed run of the same config."""
    d, store = work
    (d / "long.yaml").write_text(TINY.replace("data_sizes: [12, 24, 48]", "data_sizes: [48]")
                                 .replace("epochs: 3", "epochs: 15"))  # 60 steps a point: time to kill one
    plan = d / "plan-fault"
    cmd = _sweep_cmd(work, plan, "--launcher", "slurm")
    cmd[cmd.index(str(d / "tiny.yaml"))] = str(d / "long.yaml")
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    deadline, victim = time.time() + 300, None
    while victim is None and time.time() < deadline:
        for marker in plan.glob("runs/*/RUNNING"):
            info = json.loads(marker.read_text() or "{}")
            if info.get("slurm_job") and list(marker.parent.glob("ckpt/last.pt")):
                victim = info["slurm_job"], marker.parent, info["pid"]
                break
        time.sleep(0.2)
    assert victim, "no point reached a checkpoint while running"
    subprocess.run(["scancel", victim[0]], check=True)
    # submitit bypasses the SIGTERM of scancel and Slurm sends SIGKILL only after KillWait: kill the
    # trainer now (same host here), as a crashed node would, so the point cannot finish in the grace time
    try:
        os.kill(victim[2], 9)
    except ProcessLookupError:
        pass
    deadline = time.time() + 600
    while subprocess.run(["squeue", "-h", "-n", f"crysbench-{plan.name}"], capture_output=True,
                         text=True).stdout.strip() and time.time() < deadline:
        time.sleep(1)
    subprocess.run(["scancel", "-n", f"crysbench-fit-{plan.name}"])  # its afterok can never be met now
    assert not (victim[1] / "final.json").exists(), "the point finished before it was cancelled"
    assert {r["state"] for r in status(plan)} == {"done", "interrupted"}
    again = subprocess.run(cmd + ["--wait"], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "submitted 1 points" in again.stdout, again.stdout
    resumed = json.loads((victim[1] / "final.json").read_text())
    from crysbench import config as C
    from crysbench.train.config import RunConfig
    from crysbench.train.loop import run

    cfg = C.from_dict(RunConfig, dict(resumed["config"], out_dir=str(d / "undisturbed")))
    assert run(cfg, log=lambda m: None)["test"] == resumed["test"]
