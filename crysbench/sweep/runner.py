"""Running sweep points and reporting their state (done / running / failed / pending).

A point's state lives in its run folder: ``final.json`` (done), ``RUNNING`` (host, pid, Slurm job;
refreshed while it trains), ``FAILED`` (the error and the log path). Re-running a sweep skips done
points and resumes the others from their last checkpoint.
"""

from __future__ import annotations

import json
import os
import socket
import time
import traceback
from pathlib import Path

from crysbench.sweep.plan import load_plan, run_config
from crysbench.train.loop import run, run_dir


def point_state(folder: Path) -> str:
    if (folder / "final.json").exists():
        return "done"
    if (folder / "FAILED").exists():
        return "failed"
    marker = folder / "RUNNING"
    if marker.exists():
        info = json.loads(marker.read_text() or "{}")
        if info.get("host") == socket.gethostname() and not _alive(info.get("pid", -1)):
            return "interrupted" if (folder / "ckpt" / "last.pt").exists() else "pending"
        return "running"
    return "interrupted" if (folder / "ckpt" / "last.pt").exists() else "pending"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except (OSError, ValueError):
        return False


class Busy(RuntimeError):
    """Another process holds the point (two local drivers on one plan, or a shared run of two studies)."""


def _lock(folder: Path):
    """An exclusive, non-blocking lock on ``folder/.lock`` (released when the process dies); None if taken.
    Only rank 0 locks: the other DDP ranks of a point run alongside it."""
    import fcntl

    f = open(folder / ".lock", "a")  # noqa: SIM115 (held for the point's lifetime)
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return None
    return f


def run_index(plan_dir: str | Path, index: int) -> dict:
    """Train point ``index`` of a plan (resuming if it has a checkpoint); the Slurm array task body.
    Raises :class:`Busy` when another process is training the same point."""
    plan = load_plan(Path(plan_dir))
    cfg = run_config(plan, index)
    folder = run_dir(cfg)
    if (folder / "final.json").exists():
        return json.loads((folder / "final.json").read_text())
    folder.mkdir(parents=True, exist_ok=True)
    rank0 = int(os.environ.get("SLURM_PROCID", os.environ.get("RANK", "0"))) == 0
    lock = _lock(folder) if rank0 else None
    if rank0 and lock is None:
        raise Busy(f"{folder} is being trained by another process")
    try:
        return _run_point(cfg, folder, rank0)
    finally:
        if lock is not None:
            lock.close()


def _run_point(cfg, folder: Path, rank0: bool) -> dict:
    if (folder / "final.json").exists():  # finished while we waited for the lock
        return json.loads((folder / "final.json").read_text())
    (folder / "FAILED").unlink(missing_ok=True)
    if rank0:
        (folder / "RUNNING").write_text(json.dumps({
            "host": socket.gethostname(), "pid": os.getpid(), "started": time.time(),
            "slurm_job": os.environ.get("SLURM_JOB_ID"), "array_task": os.environ.get("SLURM_ARRAY_TASK_ID"),
            "log": os.environ.get("CRYSBENCH_LOG", "")}))
    try:
        result = run(cfg, resume=True, log=lambda msg: print(msg, flush=True))
    except BaseException as exc:
        if rank0 and not isinstance(exc, KeyboardInterrupt):
            (folder / "FAILED").write_text(f"{type(exc).__name__}: {exc}\n\n{traceback.format_exc()}"
                                           f"\nlog: {os.environ.get('CRYSBENCH_LOG', '(stdout)')}\n")
        raise
    finally:
        if rank0:
            (folder / "RUNNING").unlink(missing_ok=True)
    return result


def status(plan_dir: str | Path) -> list[dict]:
    """One row per point: index, run_id, axis value, seed, state, and the failure text if any."""
    plan = load_plan(Path(plan_dir))
    rows = []
    for i, r in enumerate(plan["runs"]):
        folder = Path(r["config"]["out_dir"]) / r["run_id"]
        state = point_state(folder)
        row = {"index": i, "run_id": r["run_id"], "axis_value": r["axis_value"], "seed": r["seed"], "state": state}
        if state == "failed":
            row["error"] = (folder / "FAILED").read_text().splitlines()[0]
            row["failure_file"] = str(folder / "FAILED")
        rows.append(row)
    return rows


def pending_indices(plan_dir: str | Path, retry_failed: bool = True) -> list[int]:
    todo = {"pending", "interrupted"} | ({"failed"} if retry_failed else set())
    return [r["index"] for r in status(plan_dir) if r["state"] in todo]


def run_local(plan_dir: str | Path, retry_failed: bool = True, poll_s: float = 5.0) -> list[int]:
    """Run every unfinished point in this process, stage by stage; returns the indices that failed.

    Several drivers may run one plan (or studies sharing runs) at once: a point another process is
    training is skipped, and a stage is only left once all its points are finished or failed, so a
    fine-tuning run never starts before its pre-training checkpoint exists.
    """
    plan = load_plan(Path(plan_dir))
    stage_of = [r.get("stage", 0) for r in plan["runs"]]
    failed = []
    for stage in sorted(set(stage_of)):
        todo = [i for i in pending_indices(plan_dir, retry_failed) if stage_of[i] == stage]
        for i in todo:
            try:
                run_index(plan_dir, i)
            except Busy:
                continue
            except Exception as exc:  # recorded in FAILED; keep going with the other points
                print(f"point {i} failed: {exc}", flush=True)
                failed.append(i)
        while any(stage_of[r["index"]] == stage and r["state"] == "running" for r in status(plan_dir)):
            time.sleep(poll_s)  # points of this stage that another driver is still training
    return failed
