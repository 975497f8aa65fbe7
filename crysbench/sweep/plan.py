"""Sweep planning: expand one scaling axis into a list of resolved run configs, written to disk
before anything runs.

A plan folder holds ``plan.json`` (sweep config, axis, one entry per run with its run_id and axis
value) and ``configs/<run_id>.yaml``. Runs write to ``<plan>/runs/<run_id>/``, so re-planning the
same sweep finds the finished runs and skips them.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Literal

from crysbench import config as C
from crysbench.train.config import RunConfig


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    name: str = ""                               # default: <model>-<axis>
    axis: Literal["data", "params", "compute"] = "data"
    base: RunConfig = RunConfig()
    seeds: tuple[int, ...] = (0, 1, 2)
    data_sizes: tuple[int, ...] = ()             # data axis; default powers of 2 from min_size to n_train
    min_size: int = 128
    model_sizes: tuple[str, ...] = ()            # params/compute axes; default the whole ladder
    flop_budgets: tuple[float, ...] = ()         # compute axis: total training FLOPs per run
    compute_epochs: int = 1000                   # compute axis: epochs cap (the FLOP budget stops runs)


def powers_of_two(lo: int, hi: int) -> list[int]:
    """2^k from the first power ≥ lo up to hi, with hi itself appended when it is not a power."""
    sizes, k = [], max(0, (max(lo, 1) - 1).bit_length())
    while 2**k < hi:
        sizes.append(2**k)
        k += 1
    return sizes + [hi]


def _ladder(model: str) -> list[str]:
    from crysbench import models

    return list(models.get(model).size_ladder().keys())


def expand(sweep: SweepConfig, n_train: int | None = None) -> list[dict]:
    """The runs of a sweep: ``[{"run_id", "axis_value", "seed", "config"}]`` (config as a dict)."""
    base = sweep.base
    points: list[tuple[object, RunConfig]] = []
    if sweep.axis == "data":
        sizes = list(sweep.data_sizes) or powers_of_two(sweep.min_size, n_train or sweep.min_size)
        points = [(n, _replace(base, data={"train_size": int(n)})) for n in sizes]
    elif sweep.axis == "params":
        points = [(s, _replace(base, model={"size": s})) for s in sweep.model_sizes or _ladder(base.model.name)]
    else:
        if not sweep.flop_budgets:
            raise ValueError("compute axis: set flop_budgets (total training FLOPs per run)")
        for budget in sweep.flop_budgets:
            for s in sweep.model_sizes or _ladder(base.model.name):
                cfg = _replace(base, model={"size": s},
                               train={"max_flops": float(budget), "epochs": sweep.compute_epochs})
                points.append(((float(budget), s), cfg))
    runs = []
    for value, cfg in points:
        for seed in sweep.seeds:
            run = _replace(cfg, train={"seed": int(seed)})
            runs.append({"run_id": C.config_hash(run), "axis_value": value, "seed": int(seed),
                         "config": C.to_dict(run)})
    return runs


def _replace(cfg: RunConfig, **sections) -> RunConfig:
    changes = {k: dataclasses.replace(getattr(cfg, k), **v) for k, v in sections.items()}
    return dataclasses.replace(cfg, **changes)


def write_plan(sweep: SweepConfig, folder: Path, n_train: int | None = None, command: str = "") -> dict:
    """Write plan.json and one config per run (atomically); runs go to ``folder/runs``."""
    folder = Path(folder).resolve()  # array tasks may start in another working directory
    sweep = dataclasses.replace(sweep, base=dataclasses.replace(sweep.base, out_dir=str(folder / "runs")))
    runs = expand(sweep, n_train)
    (folder / "configs").mkdir(parents=True, exist_ok=True)
    for r in runs:
        _atomic_text(folder / "configs" / f"{r['run_id']}.yaml", C.dump_yaml(C.from_dict(RunConfig, r["config"])))
    plan = {"sweep": C.to_dict(sweep), "axis": sweep.axis, "command": command, "runs": runs}
    _atomic_text(folder / "plan.json", json.dumps(plan, indent=1))
    return plan


def load_plan(folder: Path) -> dict:
    path = Path(folder) / "plan.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no plan here (make one with `python -m crysbench sweep` or "
                                "`python -m crysbench transfer <verb>`)")
    return json.loads(path.read_text())


def run_config(plan: dict, index: int) -> RunConfig:
    if not 0 <= index < len(plan["runs"]):
        raise IndexError(f"run index {index} outside the plan's {len(plan['runs'])} runs")
    return C.from_dict(RunConfig, plan["runs"][index]["config"])


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
