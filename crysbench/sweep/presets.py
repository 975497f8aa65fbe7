"""Named sweep presets: `quick` runs in minutes on a 2-core laptop; `full` is the committed study."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from crysbench.sweep.plan import SweepConfig
from crysbench.train.config import DataConfig, ModelConfig, OptimConfig, RunConfig, TrainConfig

QUICK_TARGET = "chgnet_formation_energy_per_atom"


def _smallest(model: str) -> str:
    from crysbench import models

    return next(iter(models.get(model).size_ladder()))


def quick(axis: str, model: str) -> SweepConfig:
    base = RunConfig(
        data=DataConfig(targets=(QUICK_TARGET,), batch_size=32),
        model=ModelConfig(name=model, size=_smallest(model)),
        optim=OptimConfig(max_lr=3e-3, schedule="cosine"),
        train=TrainConfig(epochs=12, ckpt_every=50, threads=1),
    )
    return SweepConfig(axis=axis, base=base, seeds=(0, 1, 2), data_sizes=(64, 128, 256, 512, 1024),
                       flop_budgets=(1e11, 3e11, 1e12))


def full(axis: str, model: str) -> SweepConfig:
    """The committed study: data axis 64 → the whole training split (2^k); params axis over the ladder
    (without the CPU-prohibitive top rung) at 2,048 training crystals; compute axis: the three smallest
    rungs under 4 FLOP budgets (1e9–3e10 training FLOPs, as counted by torch) at 2,048 crystals."""
    q = quick(axis, model)
    base = q.base
    if axis != "data":
        base = dataclasses.replace(base, data=dataclasses.replace(base.data, train_size=2048))
    sizes = tuple(s for s in _ladder(model) if s != "xl")
    if axis == "compute":  # budgets a 2-core machine finishes in minutes; smallest rungs only
        sizes = sizes[:3]
    return dataclasses.replace(q, base=base, data_sizes=(), min_size=64, model_sizes=sizes,
                               flop_budgets=(1e9, 3e9, 1e10, 3e10))


def _ladder(model: str) -> list[str]:
    from crysbench import models

    return list(models.get(model).size_ladder())


PRESETS = {"quick": quick, "full": full}


def resolve_store(path: str | None) -> str:
    """A store folder: the given one, or the built-in dataset's store (ingested once into a cache)."""
    if path:
        if not Path(path, "manifest.json").exists():
            raise FileNotFoundError(f"{path}: not a crysbench store (no manifest.json); make one with "
                                    "`python -m crysbench ingest`")
        return str(Path(path).resolve())
    from crysbench.builtin import builtin_store

    cache = Path(os.environ.get("CRYSBENCH_CACHE", Path.home() / ".cache" / "crysbench"))
    return str(builtin_store(cache))
