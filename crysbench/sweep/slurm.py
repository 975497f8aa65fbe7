"""Launching a plan on Slurm with submitit: one job array for the points (inside
``executor.batch()``), then a fit/report job that depends on the array with ``afterok``.

Site flags (partition, account, constraint, gres, time, …) pass straight through. Points that are
preempted or timed out are requeued by submitit and resume from their checkpoint.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class SlurmSite:
    partition: str | None = None
    account: str | None = None
    constraint: str | None = None
    gres: str | None = None
    time_min: int = 60
    cpus_per_task: int = 1
    tasks_per_point: int = 1            # >1: DDP across the tasks of one job (one rank per task)
    mem_gb: float | None = None
    array_parallelism: int = 64
    extra: tuple[str, ...] = ()         # more sbatch flags, KEY=VALUE, passed through untouched


class PointTask:
    """A picklable callable running one plan point; submitit calls ``checkpoint`` on preemption."""

    def __init__(self, plan_dir: str):
        self.plan_dir = plan_dir

    def __call__(self, index: int) -> dict:
        from crysbench.sweep.runner import run_index

        return run_index(self.plan_dir, index)

    def checkpoint(self, index: int):
        import submitit

        return submitit.helpers.DelayedSubmission(PointTask(self.plan_dir), index)  # resumes from ckpt


def _fit_and_report(plan_dir: str, results: str, n_boot: int) -> dict:
    from crysbench.sweep.report import report_sweep

    return report_sweep(plan_dir, results=results, n_boot=n_boot)


def _executor(folder: Path, site: SlurmSite, name: str, cluster: str | None):
    import submitit

    ex = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
    extra = dict(kv.split("=", 1) for kv in site.extra)
    for key, value in (("account", site.account), ("constraint", site.constraint), ("gres", site.gres)):
        if value:
            extra[key] = value
    params = {"timeout_min": site.time_min, "cpus_per_task": site.cpus_per_task,
              "tasks_per_node": site.tasks_per_point, "nodes": 1, "name": name,
              "slurm_array_parallelism": site.array_parallelism}
    if cluster != "local":
        params["slurm_additional_parameters"] = extra
        if site.partition:
            params["slurm_partition"] = site.partition
        if site.mem_gb:
            params["mem_gb"] = site.mem_gb
    ex.update_parameters(**params)
    return ex


def _finish(plan_dir: str, results: str, n_boot: int) -> dict:
    """The dependent last job: a sweep's fit and report, or a transfer study's report."""
    import json

    plan = json.loads((Path(plan_dir) / "plan.json").read_text())
    if "study" in plan:
        from crysbench.transfer.report import report_study

        return report_study(plan_dir, results)
    return _fit_and_report(plan_dir, results, n_boot)


def submit(plan_dir: str | Path, site: SlurmSite, indices: list[int], cluster: str | None = "slurm",
           results: str | Path = "results/scaling", n_boot: int = 1000):
    """Submit ``indices`` as one array per plan stage (stage k+1 starts ``afterok`` stage k: fine-tuning
    waits for its pre-training) and a dependent fit/report job; returns (point jobs, fit job)."""
    import json

    plan_dir = Path(plan_dir).resolve()
    runs = json.loads((plan_dir / "plan.json").read_text())["runs"]
    folder = plan_dir / "submitit"
    task = PointTask(str(plan_dir))
    jobs: list = []
    previous: list = []
    for stage in sorted({runs[i].get("stage", 0) for i in indices}):
        ex = _executor(folder, site, f"crysbench-{plan_dir.name}", cluster)
        _depend(ex, previous, cluster)
        with ex.batch():
            stage_jobs = [ex.submit(task, i) for i in indices if runs[i].get("stage", 0) == stage]
        jobs += stage_jobs
        previous = stage_jobs
    fit_site = dataclasses.replace(site, tasks_per_point=1, gres=None, time_min=min(site.time_min, 30))
    fit_ex = _executor(folder, fit_site, f"crysbench-fit-{plan_dir.name}", cluster)
    _depend(fit_ex, jobs, cluster)
    fit_job = fit_ex.submit(_finish, str(plan_dir), str(Path(results).resolve()), n_boot)
    return jobs, fit_job


def wait(job, poll_s: float = 0.2):
    """A submitit job's result, checking for it every ``poll_s`` seconds: ``job.result()`` sleeps 1 s
    between checks, half a second lost on average (a check is a stat of the result file; sacct is
    asked only at submitit's own back-off times)."""
    import time

    while not job.done():
        time.sleep(poll_s)
    return job.result()


def _depend(ex, jobs: list, cluster: str | None) -> None:
    """Make ``ex``'s next submissions wait for ``jobs`` (afterok); the local executor waits here."""
    if not jobs:
        return
    if cluster != "local":
        deps = ":".join(j.job_id for j in jobs)
        extra = dict(ex.parameters.get("slurm_additional_parameters") or {}, dependency=f"afterok:{deps}")
        ex.update_parameters(slurm_additional_parameters=extra)
    else:
        for j in jobs:  # the local executor has no dependencies
            j.result()
