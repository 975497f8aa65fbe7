"""Fit and report a finished (or partly finished) sweep.

Writes ``<results>/<sweep name>/``: points.csv (one row per run: axis value, x, seed, losses),
fit.json (both power-law forms per loss, CIs, verdict, provenance), plot.png (log-log points with
seed spread, fitted curve and CI band), summary.md, and predictions.json (matbench-style test
predictions of every run). x is the realised quantity: training crystals (data), parameters
(params) or training FLOPs (compute; fitted on the compute-optimal frontier).
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import numpy as np

from crysbench.sweep.plan import load_plan

X_FIELD = {"data": ("n_train", "N"), "params": ("n_params", "P"), "compute": ("train_flops", "C")}


def collect(plan_dir: Path) -> tuple[dict, list[dict]]:
    """Finished runs of a plan as flat records: x, seed, objective and per-property test MAE."""
    plan = load_plan(plan_dir)
    key, _ = X_FIELD[plan["axis"]]
    records = []
    for r in plan["runs"]:
        path = Path(r["config"]["out_dir"]) / r["run_id"] / "final.json"
        if not path.exists():
            continue
        final = json.loads(path.read_text())
        # compute axis: x is the FLOP budget (runs stop within one step of it); else the realised N or P
        x = r["axis_value"][0] if key == "train_flops" else final[key]
        rec = {"run_id": r["run_id"], "axis_value": r["axis_value"], "seed": r["seed"], "x": float(x),
               "n_params": final["n_params"], "n_train": final["n_train"],
               "train_flops": final["telemetry"]["train_flops"]}
        std = final["normalizer"]["std"]
        maes = []
        for p, (name, m) in enumerate(final["test"].items()):
            rec[f"mae_{name}"] = m["mae"]
            rec[f"r2_{name}"] = m["r2"]
            maes.append(m["mae"] / std[p])
        rec["objective"] = float(np.mean(maes))  # test MAE in standardized units, averaged over properties
        records.append(rec)
    return plan, records


def _frontier(records: list[dict], loss_key: str) -> list[dict]:
    """Compute axis: per FLOP budget, the model size with the lowest mean loss (iso-FLOP minimum)."""
    by_budget: dict[float, dict[str, list[dict]]] = {}
    for r in records:
        budget, size = r["axis_value"]
        by_budget.setdefault(budget, {}).setdefault(size, []).append(r)
    out = []
    for budget, sizes in sorted(by_budget.items()):
        best = min(sizes.values(), key=lambda rs: np.mean([r[loss_key] for r in rs]))
        out.extend(best)
    return out


def fit_losses(plan: dict, records: list[dict], n_boot: int = 1000) -> dict:
    from crysbench.fit import aggregate_runs, compare_forms

    axis = plan["axis"]
    _, symbol = X_FIELD[axis]
    loss_keys = ["objective"] + sorted(k for k in records[0] if k.startswith("mae_"))
    fits = {}
    for key in loss_keys:
        rows = _frontier(records, key) if axis == "compute" else records
        rows = [r for r in rows if r[key] is not None and r[key] > 0]
        points = aggregate_runs([{"x": r["x"], "seed": r["seed"],
                                  "loss": r[key], "run_id": r["run_id"]} for r in rows])
        try:
            comp = compare_forms(*points.fit_arrays(), axis=symbol, n_boot=n_boot)
            fits[key] = {"comparison": comp, "points": points}
        except ValueError as exc:
            fits[key] = {"error": str(exc), "points": points}
    return fits


def _atomic(path: Path, data: bytes | str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data if isinstance(data, bytes) else data.encode())
    os.replace(tmp, path)


def _points_csv(records: list[dict]) -> str:
    buf = io.StringIO()
    fields = list(records[0].keys())
    w = csv.DictWriter(buf, fieldnames=fields)
    w.writeheader()
    for r in records:
        w.writerow({k: json.dumps(v) if isinstance(v, list) else v for k, v in r.items()})
    return buf.getvalue()


def _plot(fits: dict, axis: str, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from crysbench.fit import band, predict

    keys = [k for k in fits if "comparison" in fits[k]]
    fig, axes = plt.subplots(1, max(1, len(keys)), figsize=(4.6 * max(1, len(keys)), 3.8), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=False):
        pts, comp = fits[key]["points"], fits[key]["comparison"]
        ax.errorbar(pts.x, pts.mean, yerr=np.nan_to_num(pts.std), fmt="o", capsize=3, label="mean ± sd over seeds")
        ax.scatter(pts.x_runs, pts.y_runs, s=8, alpha=0.4, color="gray", label="runs")
        grid = np.geomspace(pts.x.min(), pts.x.max(), 100)
        best = comp.best
        lo, hi = band(best, grid)
        ax.fill_between(grid, lo, hi, alpha=0.25, label=f"{int(best.ci * 100)}% CI")
        label = f"β = {best.beta:.3f} [{best.beta_ci[0]:.3f}, {best.beta_ci[1]:.3f}]"
        if best.form == "offset":
            label += f", L∞ = {best.l_inf:.3g}"
        ax.plot(grid, predict(best, grid), label=label)
        ax.set(xscale="log", yscale="log", xlabel=X_FIELD[axis][1], ylabel=key, title=key)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    _atomic(path, buf.getvalue())


def _summary(name: str, axis: str, fits: dict, n_runs: int, n_planned: int, command: str) -> str:
    lines = [f"# Scaling sweep `{name}` ({axis} axis)", "",
             f"{n_runs} of {n_planned} planned runs finished. Made by `{command}`.", "",
             "| loss | form | α | β [95% CI] | L∞ | R² (log) | decades | verdict |", "|---|---|---|---|---|---|---|---|"]
    for key, f in fits.items():
        if "comparison" not in f:
            lines.append(f"| {key} | - | - | - | - | - | - | {f['error']} |")
            continue
        c, b = f["comparison"], f["comparison"].best
        ok = "power law supported" if c.verdict.get("supported") else "; ".join(c.verdict.get("reasons", []))
        lines.append(f"| {key} | {b.form} | {b.alpha:.3g} | {b.beta:.3f} [{b.beta_ci[0]:.3f}, {b.beta_ci[1]:.3f}] "
                     f"| {b.l_inf:.3g} | {b.r2_log:.3f} | {b.decades:.2f} | {ok} |")
    return "\n".join(lines) + "\n"


def report_sweep(plan_dir: str | Path, results: str | Path = "results/scaling", n_boot: int = 1000) -> dict:
    """Fit every loss of a sweep and write the report folder; returns {"text", "dir", "fits"}."""
    from crysbench.bench_report import provenance

    plan_dir = Path(plan_dir)
    plan, records = collect(plan_dir)
    name = plan["sweep"]["name"] or plan_dir.name
    out = Path(results) / name
    if not records:
        return {"text": f"{name}: no finished runs yet", "dir": str(out), "fits": {}}
    out.mkdir(parents=True, exist_ok=True)
    fits = fit_losses(plan, records, n_boot=n_boot)
    try:
        shown = plan_dir.resolve().relative_to(Path.cwd())
    except ValueError:
        shown = plan_dir
    command = f"python -m crysbench fit {shown}"
    if plan.get("command"):
        command = f"{plan['command']}` then `{command}"
    _atomic(out / "points.csv", _points_csv(records))
    fit_json = {k: (f["comparison"].to_dict() if "comparison" in f else {"error": f["error"]}) | {
        "points": f["points"].rows()} for k, f in fits.items()}
    _atomic(out / "fit.json", json.dumps({"sweep": name, "axis": plan["axis"], "command": command,
                                         "n_runs": len(records), "n_planned": len(plan["runs"]),
                                         "provenance": provenance(), "fits": fit_json}, indent=1))
    _plot(fits, plan["axis"], name, out / "plot.png")
    _atomic(out / "predictions.json", json.dumps(_predictions(plan)))
    text = _summary(name, plan["axis"], fits, len(records), len(plan["runs"]), command)
    _atomic(out / "summary.md", text)
    return {"text": text + f"\nwrote {out}/{{points.csv, fit.json, plot.png, summary.md}}", "dir": str(out),
            "fits": fit_json}


def _predictions(plan: dict) -> dict:
    """matbench-style: {run_id: {"ids": [...], "pred": [...], "target": [...]}} for finished runs."""
    out = {}
    for r in plan["runs"]:
        path = Path(r["config"]["out_dir"]) / r["run_id"] / "predictions.json"
        if path.exists():
            out[r["run_id"]] = json.loads(path.read_text())
    return out
