"""AMP check: train one config twice, in fp32 and under autocast (bf16 or fp16), and compare.

Both runs share everything but ``train.mixed_precision`` (same seed, split, data order, schedule), so
the difference in test metrics is the cost of mixed precision on that model and data. The record
(printed and written as JSON) holds per-property test MAE / RMSE / R² of both runs, their absolute and
relative differences, how far apart the two runs' test predictions are, and the wall time of both.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

import torch

from crysbench.train.config import RunConfig

METRICS = ("mae", "rmse", "r2")
_UNSUPPORTED_HINTS = ("half", "bfloat16", "not implemented", "autocast", "gradscaler", "dtype")


class AmpUnsupportedError(RuntimeError):
    """Autocast in the requested precision does not work for this model on this device."""


def with_precision(cfg: RunConfig, precision: str) -> RunConfig:
    """``cfg`` with ``train.mixed_precision`` replaced (everything else, seed included, kept)."""
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, mixed_precision=precision))


def _train(cfg: RunConfig, resume: bool, log) -> dict:
    """One run of the trainer; the record plus the wall time of this call and whether it was reused."""
    from crysbench.train.loop import run, run_dir

    reused = (run_dir(cfg) / "final.json").exists()  # the trainer returns a finished run as is
    t0 = time.perf_counter()
    result = run(cfg, resume=resume, log=log)
    return {"run_id": result["run_id"], "dir": str(run_dir(cfg)),
            "mixed_precision": cfg.train.mixed_precision, "test": result["test"],
            "steps": result["steps"], "epochs": result["epochs"],
            "train_time_s": result["telemetry"]["wall_time_s"],
            "graphs_per_s": result["telemetry"]["graphs_per_s"],
            "call_wall_s": time.perf_counter() - t0, "reused": reused}


def _train_amp(cfg: RunConfig, resume: bool, log) -> dict:
    """The AMP run; an op without a kernel in that precision becomes an AmpUnsupportedError."""
    p, dev = cfg.train.mixed_precision, cfg.train.device
    try:
        return _train(cfg, resume, log)
    except (RuntimeError, NotImplementedError, TypeError) as err:
        if not any(h in str(err).lower() for h in _UNSUPPORTED_HINTS):
            raise
        cpu = dev == "cpu" or (dev == "auto" and not torch.cuda.is_available())
        hint = " On CPU use bf16 (fp16 autocast covers fewer CPU ops)." if cpu and p == "fp16" else ""
        raise AmpUnsupportedError(f"{p} autocast failed for model {cfg.model.name!r} (size "
                                  f"{cfg.model.size!r}) on device {dev!r}: {err}.{hint}") from err


def _rel(a: float | None, b: float | None) -> float | None:
    """(b - a) / |a|, None when undefined."""
    if a is None or b is None or not math.isfinite(a) or a == 0:
        return None
    return (b - a) / abs(a)


def metric_diff(fp32: dict, amp: dict) -> dict:
    """Per property and metric: AMP − fp32 (``abs``) and (AMP − fp32) / |fp32| (``rel``)."""
    out = {}
    for name, m32 in fp32.items():
        mamp = amp.get(name, {})
        out[name] = {k: {"fp32": m32.get(k), "amp": mamp.get(k),
                         "abs": None if m32.get(k) is None or mamp.get(k) is None else mamp[k] - m32[k],
                         "rel": _rel(m32.get(k), mamp.get(k))} for k in METRICS}
    return out


def prediction_diff(dir32: str, diramp: str, names: list[str]) -> dict:
    """How far apart the two runs' test predictions are, per property, in original units."""
    p32, pamp = (json.loads((Path(d) / "predictions.json").read_text()) for d in (dir32, diramp))
    a, b = torch.tensor(p32["pred"], dtype=torch.float64), torch.tensor(pamp["pred"], dtype=torch.float64)
    d = (b - a).abs()
    return {n: {"max_abs": float(d[:, k].max()) if d.numel() else None,
                "mean_abs": float(d[:, k].mean()) if d.numel() else None,
                "bitwise_equal": bool(torch.equal(a[:, k], b[:, k]))} for k, n in enumerate(names)}


def check_amp(cfg: RunConfig, precision: str = "bf16", resume: bool = True, log=print) -> dict:
    """Train ``cfg`` in fp32 and in ``precision`` (bf16|fp16); the comparison record."""
    if precision not in ("bf16", "fp16"):
        raise ValueError(f"AMP check precision must be bf16 or fp16, got {precision!r}")
    fp32 = _train(with_precision(cfg, "none"), resume, log)
    amp = _train_amp(with_precision(cfg, precision), resume, log)
    names = list(cfg.data.targets)
    return {
        "model": cfg.model.name, "size": cfg.model.size, "precision": precision, "seed": cfg.train.seed,
        "targets": names, "torch": torch.__version__, "device": cfg.train.device,
        "fp32": fp32, "amp": amp, "diff": metric_diff(fp32["test"], amp["test"]),
        "predictions": prediction_diff(fp32["dir"], amp["dir"], names),
        "time_ratio_amp_over_fp32": (amp["train_time_s"] / fp32["train_time_s"]
                                     if fp32["train_time_s"] else None),
    }


def format_report(rec: dict) -> str:
    """A short text table of the record."""
    lines = [f"AMP check {rec['model']}/{rec['size']}: fp32 vs {rec['precision']} (seed {rec['seed']})",
             f"{'property':<36}{'metric':<6}{'fp32':>12}{rec['precision']:>12}{'rel diff':>10}"]
    for name, per in rec["diff"].items():
        for k, d in per.items():
            rel = "-" if d["rel"] is None else f"{100 * d['rel']:+.2f}%"
            lines.append(f"{name:<36}{k:<6}{_fmt(d['fp32']):>12}{_fmt(d['amp']):>12}{rel:>10}")
    f, a = rec["fp32"], rec["amp"]
    lines.append(f"train time: fp32 {f['train_time_s']:.2f} s, {rec['precision']} {a['train_time_s']:.2f} s"
                 + (" (reused finished runs)" if f["reused"] or a["reused"] else ""))
    for name, p in rec["predictions"].items():
        lines.append(f"test predictions {name}: max |diff| {_fmt(p['max_abs'])}, mean |diff| "
                     f"{_fmt(p['mean_abs'])}, bitwise equal: {p['bitwise_equal']}")
    return "\n".join(lines)


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4g}"


def main(cfg: RunConfig, precision: str, resume: bool = True, json_path: str | None = None) -> int:
    """CLI body: run the check, print the table, write the JSON (default <out_dir>/ampcheck/<ids>.json)."""
    try:
        rec = check_amp(cfg, precision, resume=resume)
    except AmpUnsupportedError as err:
        print(f"AMP check: {err}")
        return 2
    path = Path(json_path) if json_path else (Path(cfg.out_dir) / "ampcheck" /
                                              f"{rec['fp32']['run_id']}-{rec['amp']['run_id']}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rec, indent=1))
    print(format_report(rec))
    print(f"wrote {path}")
    return 0
