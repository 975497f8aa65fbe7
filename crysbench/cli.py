"""`python -m crysbench <verb>`: the command-line entry point."""

from __future__ import annotations

import argparse
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
