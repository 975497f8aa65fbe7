"""`python -m crysbench <verb>`: the command-line entry point."""

from __future__ import annotations

import argparse
import os
import sys


def _cmd_info(args: argparse.Namespace) -> int:
    import torch

    from crysbench import __version__
    from crysbench.ops import build_info

    print(f"crysbench {__version__}, torch {torch.__version__}")
    for key, value in build_info().items():
        print(f"  {key}: {value}")
    return 0


def _cmd_bench_kernels(args: argparse.Namespace) -> int:
    from crysbench.bench_report import run_kernel_report

    return run_kernel_report(args.out, quick=args.quick, extra=args.pytest_args)


def _cmd_train(args: argparse.Namespace) -> int:
    import json

    from crysbench import config as C
    from crysbench.train.config import RunConfig
    from crysbench.train.loop import run, run_dir

    flags = {
        "model.name": args.model, "model.size": args.size, "data.store": args.data,
        "data.targets": args.target, "train.epochs": args.epochs, "optim.max_lr": args.max_lr,
        "train.mixed_precision": args.mixed_precision, "data.batch_size": args.batch_size,
        "train.max_steps": args.max_steps, "data.train_size": args.train_size, "train.seed": args.seed,
        "out_dir": args.out,
    }
    overrides = [f"{k}={json.dumps(list(v) if isinstance(v, tuple) else v)}" for k, v in flags.items()
                 if v is not None] + list(args.overrides)
    cfg = C.load(RunConfig, args.config, overrides)
    if args.check_amp:  # fp32 and AMP runs of this config, compared
        from crysbench.train import ampcheck

        return ampcheck.main(cfg, args.check_amp, resume=not args.no_resume)
    print(f"run {run_dir(cfg)}")
    result = run(cfg, resume=not args.no_resume)
    if result:
        for name, m in result["test"].items():
            print(f"test {name}: MAE {m['mae']:.4g}  RMSE {m['rmse']:.4g}  R2 {m['r2']}")
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from crysbench.sweep import cli as sweep_cli

    return sweep_cli.main(args)


def _cmd_transfer(args: argparse.Namespace) -> int:
    from crysbench.transfer import cli as transfer_cli

    return transfer_cli.main(args)


def _cmd_sweep_task(args: argparse.Namespace) -> int:
    from crysbench.sweep.runner import run_index

    run_index(args.plan, args.index)
    return 0


def _cmd_fit(args: argparse.Namespace) -> int:
    from crysbench.sweep.report import report_sweep

    summary = report_sweep(args.plan, results=args.results, n_boot=args.n_boot)
    print(summary["text"])
    return 0


def _cmd_datagen(args: argparse.Namespace) -> int:
    from crysbench.datagen import datagen_main, experimental_main

    datagen_main(args.out, args.n_labelled, args.n_untagged, args.seed, args.workers)
    if args.experimental:
        experimental_main(args.out, args.seed, args.workers)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crysbench", description=__doc__)
    sub = parser.add_subparsers(dest="verb", required=True)
    p = sub.add_parser("info", help="show the native build (torch/CUDA versions)")
    p.set_defaults(func=_cmd_info)
    p = sub.add_parser("bench-kernels", help="run the kernel benchmarks and write results/kernels/")
    p.add_argument("--out", default="results/kernels", help="output folder (default results/kernels)")
    p.add_argument("--quick", action="store_true", help="small inputs, for a smoke run")
    p.add_argument("pytest_args", nargs="*", help="extra arguments passed to pytest")
    p.set_defaults(func=_cmd_bench_kernels)
    p = sub.add_parser("train", help="train one model (YAML config + flags + dotted overrides)")
    p.add_argument("--config", help="YAML file with a RunConfig (data/model/optim/train sections)")
    p.add_argument("--model", help="registered model name (cgcnn, alignn, transformer, equiformer, crysgnn)")
    p.add_argument("--size", help="rung of the model's size ladder")
    p.add_argument("--data", help="HDF5 graph store folder")
    p.add_argument("--target", action="append", help="target property (repeat for several)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--max-steps", type=int)
    p.add_argument("--max-lr", type=float)
    p.add_argument("--batch-size", type=int, help="global batch in crystals")
    p.add_argument("--train-size", type=int, help="use a nested training subset of this size")
    p.add_argument("--mixed-precision", choices=["none", "bf16", "fp16"])
    p.add_argument("--seed", type=int)
    p.add_argument("--out", help="runs folder (default runs/)")
    p.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint")
    p.add_argument("--check-amp", choices=["bf16", "fp16"],
                   help="AMP check: train this config in fp32 and in this precision, compare test metrics")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.schedule=onecycle")
    p.set_defaults(func=_cmd_train)
    from crysbench.store import cli as store_cli

    p = sub.add_parser("ingest", help="read real files into an HDF5 graph store")
    store_cli.add_ingest_args(p)
    p.set_defaults(func=store_cli.ingest_main)
    p = sub.add_parser("describe", help="counts, target distributions and symmetry histograms of a store")
    store_cli.add_describe_args(p)
    p.set_defaults(func=store_cli.describe_main)
    p = sub.add_parser("split", help="seeded, dedup-aware train/val/test split with nested subsets")
    store_cli.add_split_args(p)
    p.set_defaults(func=store_cli.split_main)
    p = sub.add_parser("datagen", help="regenerate the built-in offline dataset (needs requirements-datagen.txt)")
    p.add_argument("--out", default="crysbench/datasets/builtin", help="output folder")
    p.add_argument("--n-labelled", type=int, default=10000)
    p.add_argument("--n-untagged", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--experimental", action="store_true", help="also the experimental formation-enthalpy set")
    p.set_defaults(func=_cmd_datagen)
    from crysbench.sweep.cli import add_arguments

    p = sub.add_parser("sweep", help="plan, launch and monitor a scaling-law sweep along one axis")
    add_arguments(p)
    p.set_defaults(func=_cmd_sweep)
    p = sub.add_parser("transfer", help="transfer-learning studies: pairwise, strategies, mpt, distill, exp")
    from crysbench.transfer.cli import add_arguments as transfer_arguments

    transfer_arguments(p)
    p.set_defaults(func=_cmd_transfer)
    p = sub.add_parser("sweep-task", help="train one point of a plan (the body of a Slurm array task)")
    p.add_argument("plan", help="plan folder")
    p.add_argument("index", type=int, help="point index (SLURM_ARRAY_TASK_ID)")
    p.set_defaults(func=_cmd_sweep_task)
    p = sub.add_parser("fit", help="fit L = a*x^-b (+ L_inf) to a finished sweep and write the report")
    p.add_argument("plan", help="plan folder")
    p.add_argument("--results", default="results/scaling", help="where points.csv/fit.json/plot.png go")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the CIs")
    p.set_defaults(func=_cmd_fit)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one verb. Bad input (a missing file, a bad config value) ends with its message on stderr and
    exit status 2, not a traceback; set CRYSBENCH_TRACEBACK=1 to see where it came from."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except Exception as e:
        manifest = sys.modules.get("crysbench.store.manifest")  # loaded if it raised StoreError
        user_error = (FileNotFoundError, ValueError) + ((manifest.StoreError,) if manifest else ())
        if os.environ.get("CRYSBENCH_TRACEBACK") or not isinstance(e, user_error):
            raise
        print(f"crysbench: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
