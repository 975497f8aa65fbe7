"""``python -m crysbench.datagen``: generate the built-in dataset (the lead wires it into the CLI)."""

from __future__ import annotations

import argparse

from crysbench.datagen import DEFAULT_OUT, datagen_main, experimental_main


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m crysbench.datagen", description=__doc__)
    p.add_argument("--out", default=str(DEFAULT_OUT), help="output folder (default: the shipped one)")
    p.add_argument("--n-labelled", type=int, default=10_000)
    p.add_argument("--n-untagged", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--experimental", action="store_true", help="also build the experimental set")
    p.add_argument("--manifest-only", action="store_true",
                   help="only rescan the finished chunks and rewrite MANIFEST.json")
    a = p.parse_args(argv)
    if a.experimental:
        experimental_main(a.out, a.seed, a.workers)
    n_lab, n_unt = (0, 0) if a.manifest_only else (a.n_labelled, a.n_untagged)
    manifest = datagen_main(a.out, n_lab, n_unt, a.seed, a.workers)
    print({k: v["records"] for k, v in manifest["sets"].items()})


if __name__ == "__main__":
    main()
