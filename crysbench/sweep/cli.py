"""`python -m crysbench sweep [run|plan|status] --axis data|params|compute --model M ...`"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from crysbench import config as C
from crysbench.sweep.plan import SweepConfig, load_plan, write_plan
from crysbench.sweep.presets import PRESETS, resolve_store
from crysbench.sweep.slurm import SlurmSite


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", nargs="?", default="run", choices=["run", "plan", "status"],
                   help="run (default): plan and launch; plan: only write the plan; status: show points")
    p.add_argument("plan_dir", nargs="?", help="with status: the plan folder")
    p.add_argument("--axis", choices=["data", "params", "compute"], default="data")
    p.add_argument("--model", default="cgcnn")
    p.add_argument("--preset", choices=sorted(PRESETS), default="quick",
                   help="quick: minutes on a laptop; full: the committed study")
    p.add_argument("--config", help="YAML SweepConfig (sections: base.data/model/optim/train, seeds, ...)")
    p.add_argument("--data", help="store folder (default: the built-in dataset, ingested on first use)")
    p.add_argument("--out", help="plan folder (default sweeps/<model>-<axis>-<preset>)")
    p.add_argument("--launcher", choices=["local", "slurm", "submitit-local", "none"], default="local")
    p.add_argument("--wait", action="store_true", help="with slurm: wait for the fit job and print it")
    p.add_argument("--pending", action="store_true", help="with status: print unfinished indices as 1,4,5")
    p.add_argument("--results", default="results/scaling")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the fit CIs")
    for flag in ("partition", "account", "constraint", "gres"):
        p.add_argument(f"--{flag}", help=f"Slurm --{flag} (passed through)")
    p.add_argument("--time-min", type=int, default=60)
    p.add_argument("--tasks-per-point", type=int, default=1, help="DDP ranks per point (Slurm tasks)")
    p.add_argument("--cpus-per-task", type=int, default=1)
    p.add_argument("--sbatch", action="append", default=[], help="extra sbatch KEY=VALUE, passed through")
    p.add_argument("overrides", nargs="*", help="dotted overrides of the SweepConfig, e.g. seeds=[0,1]")


def sweep_config(args: argparse.Namespace) -> SweepConfig:
    base = PRESETS[args.preset](args.axis, args.model)
    data = resolve_store(args.data)
    cfg = C.load(SweepConfig, args.config, [f"base.data.store={json.dumps(data)}", *args.overrides],
                 base=C.to_dict(base))
    name = cfg.name or f"{args.model}-{args.axis}-{args.preset}"
    return dataclasses.replace(cfg, name=name)


def _print_status(plan_dir: str, pending_only: bool) -> int:
    from crysbench.sweep.runner import pending_indices, status

    if pending_only:
        print(",".join(map(str, pending_indices(plan_dir))))
        return 0
    rows = status(plan_dir)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
        line = f"{r['index']:4d} {r['run_id']} {str(r['axis_value']):>14} seed {r['seed']}  {r['state']}"
        if r["state"] == "failed":
            line += f"  {r['error']}  (see {r['failure_file']})"
        print(line)
    print("  ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    return 0


def main(args: argparse.Namespace) -> int:
    if args.action == "status":
        return _print_status(args.plan_dir or args.out, args.pending)
    cfg = sweep_config(args)
    plan_dir = Path(args.out or f"sweeps/{cfg.name}")
    from crysbench.train.data import count_train

    import shlex
    import sys

    command = "python -m crysbench " + shlex.join(sys.argv[1:])
    plan = write_plan(cfg, plan_dir, n_train=count_train(cfg.base.data), command=command)
    print(f"plan {plan_dir}: {len(plan['runs'])} runs along {cfg.axis}")
    if args.action == "plan" or args.launcher == "none":
        return 0
    from crysbench.sweep.runner import pending_indices, run_local

    todo = pending_indices(plan_dir)
    if args.launcher == "local":
        failed = run_local(plan_dir)
        from crysbench.sweep.report import report_sweep

        print(report_sweep(plan_dir, results=args.results, n_boot=args.n_boot)["text"])
        return 1 if failed else 0
    from crysbench.sweep.slurm import submit, wait

    site = SlurmSite(partition=args.partition, account=args.account, constraint=args.constraint, gres=args.gres,
                     time_min=args.time_min, cpus_per_task=args.cpus_per_task,
                     tasks_per_point=args.tasks_per_point, extra=tuple(args.sbatch))
    cluster = "local" if args.launcher == "submitit-local" else "slurm"
    jobs, fit_job = submit(plan_dir, site, todo, cluster=cluster, results=args.results, n_boot=args.n_boot)
    print(f"submitted {len(jobs)} points as job array {jobs[0].job_id.split('_')[0] if jobs else '-'}; "
          f"fit job {fit_job.job_id} (afterok)")
    if args.wait:
        print(wait(fit_job)["text"])
    print(f"follow with: python -m crysbench sweep status {plan_dir}")
    return 0
