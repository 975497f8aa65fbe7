"""A 2-task DDP point under a real Slurm (slurm/local-cluster.sh up) equals the 1-task point with the
same global batch: test metrics, logged losses and final weights.

Both points go through the array-task role of ``slurm/scaling.sh`` (``srun python -m crysbench
sweep-task``), gloo on CPU; rank, world, MASTER_ADDR and the port come from the Slurm environment.
The model is the transformer (no batch norm): CGCNN's BatchNorm keeps per-rank statistics under DDP
on CPU, since torch's SyncBatchNorm needs a GPU, and differs by ~1e-3. Skipped when no cluster
answers, unless CRYSBENCH_REQUIRE_SLURM=1.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fixtures import require_slurm

from crysbench import config as C
from crysbench.distributed import detect
from crysbench.sweep.plan import SweepConfig, load_plan, write_plan
from crysbench.testing import synthetic_store
from crysbench.train import checkpoint
from crysbench.train.config import RunConfig
from crysbench.train.data import count_train

ROOT = Path(__file__).resolve().parents[1]
RTOL = 1e-6  # metrics and losses: float32 sums in another order (gradients averaged over ranks)
WEIGHT_RTOL = 1e-5  # per tensor, relative to its largest entry (~5e-6 measured on a LayerNorm bias)


require_slurm(module=True)


def test_detect_reads_slurm_tasks():
    env = {"SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_STEP_NUM_TASKS": "2", "SLURM_LOCALID": "1",
           "SLURM_JOB_ID": "12345", "SLURM_JOB_NODELIST": "gpu-a[017-020],gpu-b3"}
    de = detect(env)
    assert (de.rank, de.world_size, de.local_rank, de.source) == (1, 2, 1, "slurm")
    assert (de.master_addr, de.master_port) == ("gpu-a017", 29500 + 345)
    assert detect(dict(env, MASTER_PORT="31000", MASTER_ADDR="10.0.0.1")).master_port == 31000
    assert detect({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}).source == "single"
    batch_script = {"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_JOB_ID": "12345"}  # sbatch -n 2, no srun
    assert detect(batch_script).world_size == 1


def test_batch_script_of_a_two_task_job_trains_alone(tmp_path):
    """``sbatch -n 2`` running the trainer without srun: one process, which must not wait for a rank 1."""
    code = "from crysbench.distributed import detect; print('world', detect().world_size)"
    script = tmp_path / "job.sh"
    script.write_text(f'#!/bin/bash\n{sys.executable} -c "{code}"\n')
    out = subprocess.run(["sbatch", "--parsable", "--ntasks=2", f"--output={tmp_path}/o.out", "--time=2",
                          str(script)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    _wait(out.stdout.strip(), timeout=60)  # sbatch --wait polls every ~10 s
    assert "world 1" in (tmp_path / "o.out").read_text()


def _plan(folder: Path, store: Path) -> Path:
    base = C.from_dict(RunConfig, {
        "data": {"store": str(store), "targets": ["volume_per_atom"], "batch_size": 12},
        "model": {"name": "transformer", "size": "xxs"},
        "train": {"epochs": 3, "threads": 1, "ckpt_every": 100, "loss": "mse"}})
    count_train(base.data)  # makes the split now: two ranks must not race to write it
    write_plan(SweepConfig(axis="data", base=base, seeds=(0,), data_sizes=(36,)), folder)
    return folder


def _submit(plan: Path, ntasks: int) -> str:
    env = dict(os.environ, PLAN=str(plan), PYTHON=sys.executable)
    out = subprocess.run(["sbatch", "--parsable", "--array=0", f"--ntasks={ntasks}", "--cpus-per-task=1",
                          f"--chdir={plan}", f"--output={plan}/task-%A_%a.out", "--time=5",
                          str(ROOT / "slurm" / "scaling.sh")], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().split(";")[0]


def _wait(job: str, timeout: float) -> None:
    deadline = time.time() + timeout
    while subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True).stdout.strip():
        if time.time() > deadline:
            subprocess.run(["scancel", job])
            raise AssertionError(f"job {job} still queued/running after {timeout:.0f} s")
        time.sleep(0.5)


def _outcome(plan: Path) -> tuple[dict, list, dict, str]:
    run = load_plan(plan)["runs"][0]
    folder = Path(run["config"]["out_dir"]) / run["run_id"]
    log = "".join(p.read_text() for p in plan.glob("task-*.out"))
    assert (folder / "final.json").exists(), f"point of {plan} did not finish; log:\n{log}"
    final = json.loads((folder / "final.json").read_text())
    history = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    weights = checkpoint.load(folder / "ckpt" / "last.pt")["model"]
    return final, history, weights, log


@pytest.fixture(scope="module")
def points(tmp_path_factory):
    d = tmp_path_factory.mktemp("ddp")
    store = synthetic_store(d / "store", n=64)
    plans = {n: _plan(d / f"plan-{n}", store) for n in (1, 2)}
    jobs = {n: _submit(plans[n], n) for n in (1, 2)}  # both at once: the cluster advertises spare CPUs
    for job in jobs.values():
        _wait(job, timeout=90)
    return {n: _outcome(plans[n]) for n in (1, 2)}


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= RTOL * max(abs(a), abs(b), 1e-12)


def test_two_tasks_ran_ddp_from_slurm_env(points):
    final2, _, _, log2 = points[2]
    assert final2["telemetry"]["world_size"] == 2, log2
    assert points[1][0]["telemetry"]["world_size"] == 1
    assert log2.count("epoch 3 step") == 1, "only rank 0 logs epochs"


def test_two_tasks_equal_one_task(points):
    (f1, h1, w1, _), (f2, h2, w2, _) = points[1], points[2]
    assert f1["steps"] == f2["steps"] == 9 and f1["n_train"] == f2["n_train"] == 36
    for name, m1 in f1["test"].items():
        for key in ("mae", "rmse"):
            got = f2["test"][name][key]
            assert _close(m1[key], got), f"test {name} {key}: 1 task {m1[key]}, 2 tasks {got} (rtol {RTOL})"
    for r1, r2 in zip(h1, h2, strict=True):  # train_loss is the mean over both ranks, not rank 0's
        for key in ("train_loss", "val_loss"):
            assert _close(r1[key], r2[key]), f"epoch {r1['epoch']} {key}: {r1[key]} vs {r2[key]}"
    assert w1.keys() == w2.keys()
    worst = max((_rel_diff(_visible(k, w1[k]), _visible(k, w2[k])), k) for k in w1)
    assert worst[0] <= WEIGHT_RTOL, f"final weights differ: {worst[1]} by {worst[0]:.2e} (tol {WEIGHT_RTOL})"


def _visible(name: str, w):
    """The part of a parameter the output depends on. The attention softmax is blind to shifts that are
    equal over a node's neighbours (key bias, the key-shift and logit-bias parts of the edge bias): their
    true gradient is 0, so Adam turns the round-off left in it into steps of lr size that differ with
    the summation order (1 vs 2 ranks) and change nothing downstream."""
    if name.endswith("key.bias"):
        return w[:0]
    if name.endswith("edge.bias"):  # [key shift (w) | value gate (w) | logit bias (heads)]
        width = (w.numel() - 2) // 2  # xxs: 2 heads
        return w[width:2 * width]
    return w


def _rel_diff(a, b) -> float:
    return float((a - b).abs().max() / a.abs().max().clamp_min(1e-12)) if a.numel() else 0.0
