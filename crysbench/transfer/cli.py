"""`python -m crysbench transfer pairwise|strategies|mpt|distill|exp|status|report ...`"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
from pathlib import Path

from crysbench import config as C
from crysbench.transfer.studies import STUDIES, StudyConfig, preset, write_study_plan


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("verb", choices=[*STUDIES, "status", "report"],
                   help="a study to plan and run, or status/report of a plan folder")
    p.add_argument("--model", default="cgcnn", help="the model pre-trained and fine-tuned (students: --students)")
    p.add_argument("--preset", choices=["quick", "full"], default="quick",
                   help="quick: minutes on a laptop; full: the committed studies")
    p.add_argument("--config", help="YAML StudyConfig (properties, ft_sizes, seeds, base.train.epochs, ...)")
    p.add_argument("--data", help="labelled store (default: the built-in dataset)")
    p.add_argument("--ssl-data", help="untagged store for CrysGNN pre-training (default: built-in untagged set)")
    p.add_argument("--exp-data", help="experimental store (default: the built-in experimental set)")
    p.add_argument("--root", help="studies folder; runs are shared by the studies in it "
                                  "(default transfer/<model>-<preset>)")
    p.add_argument("--launcher", choices=["local", "slurm", "submitit-local", "none"], default="local")
    p.add_argument("--wait", action="store_true", help="with slurm: wait for the report job and print it")
    p.add_argument("--pending", action="store_true", help="with status: print unfinished indices as 1,4,5")
    p.add_argument("--results", help="report folder (default results/transfer/<study>-<model>-<preset>)")
    for flag in ("partition", "account", "constraint", "gres"):
        p.add_argument(f"--{flag}", help=f"Slurm --{flag} (passed through)")
    p.add_argument("--time-min", type=int, default=60)
    p.add_argument("--cpus-per-task", type=int, default=1)
    p.add_argument("--sbatch", action="append", default=[], help="extra sbatch KEY=VALUE, passed through")
    p.add_argument("overrides", nargs="*", help="dotted overrides of the StudyConfig, e.g. seeds=[0,1] "
                   "(before the --flags); with status/report: the plan folder")


def study_config(args: argparse.Namespace) -> StudyConfig:
    from crysbench.sweep.presets import resolve_store

    base = preset(args.preset, args.verb, args.model)
    fill = [f"base.data.store={json.dumps(resolve_store(args.data))}"]
    if args.verb in ("distill", "exp"):
        fill.append(f"ssl_store={json.dumps(_builtin_or(args.ssl_data, 'untagged'))}")
    if args.verb == "exp":
        fill.append(f"exp_store={json.dumps(_builtin_or(args.exp_data, 'experimental'))}")
    return C.load(StudyConfig, args.config, [*fill, *args.overrides], base=C.to_dict(base))


def _builtin_or(path: str | None, name: str) -> str:
    import os

    from crysbench.builtin import builtin_store
    from crysbench.sweep.presets import resolve_store

    if path:
        return resolve_store(path)
    cache = Path(os.environ.get("CRYSBENCH_CACHE", Path.home() / ".cache" / "crysbench"))
    return str(builtin_store(cache, name))


def _report(plan_dir: Path, results: str) -> dict:
    from crysbench.transfer.report import report_study

    return report_study(plan_dir, results)


def main(args: argparse.Namespace) -> int:
    if args.verb in ("status", "report"):
        if len(args.overrides) != 1:
            raise SystemExit(f"transfer {args.verb}: give the plan folder (one argument)")
        args.plan_dir = args.overrides[0]
        if args.verb == "status":
            from crysbench.sweep.cli import _print_status

            return _print_status(args.plan_dir, args.pending)
        plan = json.loads((Path(args.plan_dir) / "plan.json").read_text())
        results = args.results or f"results/transfer/{Path(args.plan_dir).name}"
        print(_report(Path(args.plan_dir), results)["text"])
        print(f"report in {results}/ (summary.md, tables as .md/.csv, plots as .png); study {plan['study']}")
        return 0
    cfg = study_config(args)
    root = Path(args.root or f"transfer/{args.model}-{args.preset}")
    command = "python -m crysbench " + shlex.join(sys.argv[1:])
    name = f"{args.verb}-{args.model}-{args.preset}" if not cfg.name else cfg.name
    plan_dir, plan = write_study_plan(args.verb, dataclasses.replace(cfg, name=name), root, command=command)
    stages = sorted({r["stage"] for r in plan["runs"]})
    print(f"plan {plan_dir}: {len(plan['runs'])} runs in {len(stages)} stages (runs in {root}/runs)")
    if args.launcher == "none":
        return 0
    from crysbench.sweep.runner import pending_indices, run_local

    results = args.results or f"results/transfer/{name}"
    if args.launcher == "local":
        failed = run_local(plan_dir)
        print(_report(plan_dir, results)["text"])
        print(f"report in {results}/")
        return 1 if failed else 0
    from crysbench.sweep.slurm import SlurmSite, submit

    site = SlurmSite(partition=args.partition, account=args.account, constraint=args.constraint,
                     gres=args.gres, time_min=args.time_min, cpus_per_task=args.cpus_per_task,
                     extra=tuple(args.sbatch))
    cluster = "local" if args.launcher == "submitit-local" else "slurm"
    jobs, report_job = submit(plan_dir, site, pending_indices(plan_dir), cluster=cluster, results=results)
    print(f"submitted {len(jobs)} runs as {len(stages)} chained job arrays; report job {report_job.job_id}")
    if args.wait:
        print(report_job.result()["text"])
    print(f"follow with: python -m crysbench transfer status {plan_dir}")
    return 0
