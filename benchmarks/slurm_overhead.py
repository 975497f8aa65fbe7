"""Orchestration overhead per sweep point on a real Slurm: submit → start → result collected.

Each point is a trivially small training run (CGCNN xxs, 12 crystals, one step), so almost all of a
point's wall time is orchestration. For every point::

    overhead = (collected - submitted) - telemetry.wall_time_s   (the training time in final.json)

and the timeline the trainer writes into ``final.json`` (process start, run start, train start/end,
final write) splits it into: the submit call, launch (Slurm scheduling + slurmd + job script + srun),
Python start-up and imports, run set-up (split, normalizer, model), training, final evaluation and
write, and collection (process exit + the waiter noticing).

Launchers: ``submitit`` (crysbench.sweep.slurm's executor and PointTask) and ``sbatch`` (the array-task
role of slurm/scaling.sh). Modes: ``serial`` (submit one point, wait, next) and ``array`` (all points
as one job array, collected as they finish). Needs a cluster: ``slurm/local-cluster.sh up``.

    python benchmarks/slurm_overhead.py --points 10 --out results/scaling/overhead/<machine>.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PHASES = ("submit", "launch", "python_imports", "setup", "train", "final_eval", "collect")


def make_plan(folder: Path, store: Path, n_points: int, model: str) -> Path:
    """A plan of ``n_points`` distinct tiny runs (one seed each): one optimizer step on 12 crystals."""
    from crysbench import config as C
    from crysbench.sweep.plan import SweepConfig, write_plan
    from crysbench.train.config import RunConfig
    from crysbench.train.data import count_train

    base = C.from_dict(RunConfig, {
        "data": {"store": str(store), "targets": ["volume_per_atom"], "batch_size": 12},
        "model": {"name": model, "size": "xxs"},
        "train": {"epochs": 1, "threads": 1, "ckpt_every": 1000}})
    count_train(base.data)  # the split exists before any task starts
    write_plan(SweepConfig(axis="data", base=base, seeds=tuple(range(n_points)), data_sizes=(12,)), folder)
    return folder


def _final(plan: Path, index: int) -> Path:
    run = json.loads((plan / "plan.json").read_text())["runs"][index]
    return Path(run["config"]["out_dir"]) / run["run_id"] / "final.json"


# ---- launchers: submit(indices) -> handle; done(handle, index) -> bool -----------------------
class Submitit:
    name = "submitit"

    def __init__(self, plan: Path, poll_s: float):
        from crysbench.sweep.slurm import PointTask, SlurmSite, _executor

        self.plan, self.poll_s, self.task = plan, poll_s, PointTask(str(plan))
        self.ex = _executor(plan / "submitit", SlurmSite(time_min=10), f"overhead-{plan.name}", "slurm")
        self.jobs: dict[int, object] = {}

    def submit(self, indices: list[int]) -> None:
        if len(indices) == 1:
            self.jobs[indices[0]] = self.ex.submit(self.task, indices[0])
            return
        with self.ex.batch():
            jobs = [self.ex.submit(self.task, i) for i in indices]
        self.jobs.update(zip(indices, jobs, strict=True))

    def done(self, index: int) -> bool:
        job = self.jobs[index]
        if not job.done():  # the result pickle exists (or sacct says finished)
            return False
        job.result()  # collected: raises if the point failed
        return True


class Sbatch:
    name = "sbatch"

    def __init__(self, plan: Path, poll_s: float):
        self.plan, self.poll_s = plan, poll_s

    def submit(self, indices: list[int]) -> None:
        script = str(ROOT / "slurm" / "scaling.sh")  # CRYSBENCH_SCRIPT: as the script's driver role sets it
        env = dict(os.environ, PLAN=str(self.plan), PYTHON=sys.executable, CRYSBENCH_SCRIPT=script)
        out = subprocess.run(["sbatch", "--parsable", f"--array={','.join(map(str, indices))}",
                              f"--chdir={self.plan}", f"--output={self.plan}/task-%A_%a.out", "--time=10",
                              script], env=env, capture_output=True, text=True)
        if out.returncode:
            raise RuntimeError(f"sbatch failed: {out.stderr}")

    def done(self, index: int) -> bool:
        return _final(self.plan, index).exists()  # the point's result is its final.json


def _collect(launcher, indices: list[int], timeout: float) -> dict[int, float]:
    """Poll until every point is collected; the time each one was first seen done."""
    seen: dict[int, float] = {}
    deadline = time.time() + timeout
    while len(seen) < len(indices):
        for i in indices:
            if i not in seen and launcher.done(i):
                seen[i] = time.time()
        if time.time() > deadline:
            raise TimeoutError(f"points {sorted(set(indices) - set(seen))} not done after {timeout:.0f} s")
        if len(seen) < len(indices):
            time.sleep(launcher.poll_s)
    return seen


def _record(plan: Path, index: int, t_submit: float, t_submitted: float, t_collected: float) -> dict:
    final = json.loads(_final(plan, index).read_text())
    tel = final["telemetry"]
    tl = tel["timeline"]
    train = tel["wall_time_s"]
    wall = t_collected - t_submit
    phases = {"submit": t_submitted - t_submit, "launch": tl["process_start"] - t_submitted,
              "python_imports": tl["run_start"] - tl["process_start"],
              "setup": tl["train_start"] - tl["run_start"], "train": tl["train_end"] - tl["train_start"],
              "final_eval": tl["final"] - tl["train_end"], "collect": t_collected - tl["final"]}
    return {"index": index, "wall_s": wall, "train_s": train, "overhead_s": wall - train,
            "phases_s": phases}


def run_mode(launcher, indices: list[int], mode: str, timeout: float) -> dict:
    points, t_start = [], time.time()
    if mode == "serial":
        for i in indices:
            t0 = time.time()
            launcher.submit([i])
            t1 = time.time()
            t2 = _collect(launcher, [i], timeout)[i]
            points.append(_record(launcher.plan, i, t0, t1, t2))
    else:
        t0 = time.time()
        launcher.submit(indices)
        t1 = time.time()
        seen = _collect(launcher, indices, timeout)
        points = [_record(launcher.plan, i, t0, t1, seen[i]) for i in indices]
    makespan = time.time() - t_start
    return {"launcher": launcher.name, "mode": mode, "n_points": len(indices), "makespan_s": makespan,
            "per_point_amortized_s": makespan / len(indices), "summary": _summary(points), "points": points}


def _q(values: list[float], q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, round(q * (len(v) - 1)))]


def _summary(points: list[dict]) -> dict:
    out = {}
    for key in ("overhead_s", "wall_s", "train_s"):
        vals = [p[key] for p in points]
        out[key] = {"median": statistics.median(vals), "p90": _q(vals, 0.9),
                    "min": min(vals), "max": max(vals)}
    out["phases_median_s"] = {k: statistics.median(p["phases_s"][k] for p in points) for k in PHASES}
    return out


def _environment() -> dict:
    import submitit
    import torch

    slurm = subprocess.run(["sinfo", "--version"], capture_output=True, text=True).stdout.strip()
    config = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True).stdout
    sched = [line.split("=", 1)[1].strip() for line in config.splitlines()
             if line.startswith("SchedulerParameters")]
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    return {"host": socket.gethostname(), "cpus": os.cpu_count(), "loadavg_start": os.getloadavg(),
            "python": platform.python_version(), "torch": torch.__version__, "submitit": submitit.__version__,
            "slurm": slurm, "scheduler_parameters": sched[0] if sched else None, "git_commit": commit,
            "command": "python " + " ".join(sys.argv)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--points", type=int, default=10, help="points per launcher and mode")
    p.add_argument("--launchers", nargs="+", default=["submitit", "sbatch"], choices=["submitit", "sbatch"])
    p.add_argument("--modes", nargs="+", default=["serial", "array"], choices=["serial", "array"])
    p.add_argument("--model", default="cgcnn")
    p.add_argument("--poll-s", type=float, default=1.0, help="waiter's polling interval (submitit's is 1 s)")
    p.add_argument("--timeout", type=float, default=300)
    p.add_argument("--work", help="scratch folder (default: a new temporary one)")
    p.add_argument("--label", default="", help="a name for this configuration, e.g. before / after")
    p.add_argument("--out", help="write the JSON here (appended to a list of runs if the file exists)")
    args = p.parse_args(argv)
    from crysbench.testing import synthetic_store

    work = Path(args.work or tempfile.mkdtemp(prefix="slurm-overhead-")).resolve()
    store = synthetic_store(work / "store", n=64)
    env = dict(_environment(), label=args.label, poll_s=args.poll_s, model=args.model)
    results = []
    for name in args.launchers:
        for mode in args.modes:
            plan = make_plan(work / f"plan-{args.label or 'run'}-{name}-{mode}-{time.time_ns()}", store,
                             args.points, args.model)
            launcher = (Submitit if name == "submitit" else Sbatch)(plan, args.poll_s)
            res = run_mode(launcher, list(range(args.points)), mode, args.timeout)
            s = res["summary"]
            print(f"{name:8s} {mode:6s} overhead median {s['overhead_s']['median']:.2f} s "
                  f"p90 {s['overhead_s']['p90']:.2f} s  (train {s['train_s']['median']:.2f} s; "
                  f"makespan {res['makespan_s']:.1f} s)  phases " +
                  " ".join(f"{k} {v:.2f}" for k, v in s["phases_median_s"].items()), flush=True)
            results.append(res)
    doc = {"environment": env, "results": results}
    if args.out:
        out = Path(args.out)
        runs = json.loads(out.read_text()) if out.exists() else []
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps([*runs, doc], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
