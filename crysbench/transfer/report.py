"""Tables, paired tests and heatmaps for a finished (or partly finished) transfer study.

A study is a plan folder whose ``plan.json`` lists runs (role, labels, seed, config) and, under
``meta.tables``, table specs. Per spec, :func:`cell_stats` groups the selected finished runs into
cells (facet value, row value, column value) and reduces each over seeds: test MAE and R² of the
first target, mean and 95% Student-t half-width. With a ``baseline`` row each cell is paired by seed
with the baseline cell of the same (facet, column): MAE change in % and a paired t-test p-value.
A ``best_of`` spec adds a derived row holding, per (facet, column), the eligible row with the lowest
mean MAE. :func:`report_study` writes ``<name>.csv``, ``<name>.md`` and ``<name>.png`` per table
and ``summary.md``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import warnings
from pathlib import Path

import numpy as np
from scipy import stats

SPEC_KEYS = {"name", "title", "rows", "cols", "facet", "select", "baseline", "best_of", "heatmap",
             "row_order", "col_order"}
CSV_FIELDS = ["table", "facet", "row", "col", "label", "derived", "best_row", "is_best", "n", "n_runs",
              "seeds", "mae_mean", "mae_sd", "mae_ci", "r2_mean", "r2_ci", "mae_mean_predictor", "no_ci",
              "ratio", "d_mae_pct", "p_value", "n_paired"]
MINUS = "\u2212"


# ----------------------------------------------------------------------------- inputs

def load_study(plan_dir: str | Path) -> dict:
    path = Path(plan_dir) / "plan.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no transfer plan here (make one: `python -m crysbench transfer`)")
    return json.loads(path.read_text())


def check_spec(spec: dict) -> None:
    """Raise a ValueError naming what is wrong with a table spec."""
    missing = {"name", "rows", "cols"} - spec.keys()
    if missing:
        raise ValueError(f"table spec {spec.get('name', '?')!r} lacks {sorted(missing)}")
    if spec.keys() - SPEC_KEYS:
        raise ValueError(f"table {spec['name']!r}: unknown keys {sorted(spec.keys() - SPEC_KEYS)}, "
                         f"expected some of {sorted(SPEC_KEYS)}")
    if not spec["name"] or any(ch in spec["name"] for ch in "/\\") or spec["name"].startswith("."):
        raise ValueError(f"table name {spec['name']!r} must be a plain file name")
    for key in ("baseline", "best_of"):
        given = spec.get(key) or {}
        keyed = given.get("key") if key == "best_of" else next(iter(given), None)
        if given and keyed != spec["rows"]:
            raise ValueError(f"table {spec['name']!r}: {key} must name the row key {spec['rows']!r}, "
                             f"got {given}")


def _hashable(v):
    return tuple(_hashable(x) for x in v) if isinstance(v, list) else v


def run_value(run: dict, key: str):
    """A run's value for key: its label if it has one, else the run field (role, stage, seed, ...)."""
    labels = run.get("labels") or {}
    return _hashable(labels[key] if key in labels else run.get(key))


def row_value(run: dict, key: str):
    """Like :func:`run_value`, but a run without that label sits in a row named by its role
    (a scratch run has no pre-training label)."""
    v = run_value(run, key)
    return run.get("role") if v is None else v


def selected(run: dict, spec: dict) -> bool:
    return all(run_value(run, k) in [_hashable(x) for x in allowed]
               for k, allowed in (spec.get("select") or {}).items())


def collect(plan: dict) -> list[dict]:
    """Finished runs as records: role, labels, seed, and test MAE / R² of the run's first target."""
    records = []
    for r in plan["runs"]:
        path = Path(r["config"]["out_dir"]) / r["run_id"] / "final.json"
        if not path.exists() or not r["config"]["data"]["targets"]:  # unfinished, or SSL (no property)
            continue
        target = r["config"]["data"]["targets"][0]
        test = json.loads(path.read_text())["test"]
        if target not in test:
            raise ValueError(f"{path}: no test metrics for the first target {target!r} (has {sorted(test)})")
        m = test[target]
        records.append({"run_id": r["run_id"], "role": r.get("role"), "labels": r.get("labels") or {},
                        "seed": r["seed"], "mae": float(m["mae"]),
                        "r2": math.nan if m["r2"] is None else float(m["r2"]),
                        "mae_mean_baseline": float(m.get("mae_mean_baseline", math.nan))})
    return records


def _finished(plan: dict) -> int:
    """Runs with a final.json, SSL pre-training included (it has no property, so no record)."""
    return sum((Path(r["config"]["out_dir"]) / r["run_id"] / "final.json").exists() for r in plan["runs"])


# ----------------------------------------------------------------------------- statistics

def mean_ci(values, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, sample sd, Student-t CI half-width); sd and half-width are NaN for one value."""
    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        return float(x.mean()) if len(x) else math.nan, math.nan, math.nan
    sd = float(x.std(ddof=1))
    return float(x.mean()), sd, float(stats.t.ppf(0.5 + level / 2, len(x) - 1) * sd / math.sqrt(len(x)))


def _cell(recs: list[dict]) -> dict:
    """Reduce one cell's runs over seeds (runs sharing a seed are averaged first, so n counts seeds)."""
    by_seed: dict = {}
    for r in recs:
        by_seed.setdefault(r["seed"], []).append(r)
    seeds = sorted(by_seed, key=_sort_key)
    mae = {s: float(np.mean([r["mae"] for r in by_seed[s]])) for s in seeds}
    r2 = [float(np.mean([r["r2"] for r in by_seed[s]])) for s in seeds]
    m, sd, ci = mean_ci(list(mae.values()))
    r2m, _, r2ci = mean_ci(r2)
    pred = [r["mae_mean_baseline"] for r in recs if math.isfinite(r["mae_mean_baseline"])]
    return {"n": len(seeds), "n_runs": len(recs), "seeds": seeds, "mae_by_seed": mae, "mae_mean": m,
            "mae_sd": sd, "mae_ci": ci, "r2_mean": r2m, "r2_ci": r2ci, "no_ci": len(seeds) < 2,
            "mae_mean_predictor": float(np.mean(pred)) if pred else math.nan}


def paired(cell: dict, base: dict) -> tuple[float, float, int]:
    """(MAE change in % vs base, paired t-test p, number of shared seeds). The change is the ratio
    of mean MAEs over the shared seeds (over all seeds when none are shared); p needs ≥ 2 shared."""
    common = [s for s in cell["mae_by_seed"] if s in base["mae_by_seed"]]
    a = np.array([cell["mae_by_seed"][s] for s in common])
    b = np.array([base["mae_by_seed"][s] for s in common])
    pct = 100 * (a.mean() / b.mean() - 1) if common else 100 * (cell["mae_mean"] / base["mae_mean"] - 1)
    p = math.nan
    if len(common) >= 2:
        with warnings.catch_warnings():  # identical differences: scipy warns and returns NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            p = float(stats.ttest_rel(a, b).pvalue)
    return float(pct), p, len(common)


def _sort_key(v):
    return (0, float(v), "") if isinstance(v, (int, float)) and not isinstance(v, bool) else (1, 0.0, str(v))


def _order(values, given=None, first=None, last=None) -> list:
    """Given order first, then the rest sorted (numbers numerically); ``first``/``last`` pinned."""
    values = set(values)
    head = [h for h in map(_hashable, given or []) if h in values]
    rest = sorted(values - set(head) - {first, last}, key=_sort_key)
    out = ([first] if first in values and first not in head else []) + head + rest
    return out + ([last] if last in values and last not in head else [])


def cell_stats(records: list[dict], spec: dict) -> list[dict]:
    """Cells of one table: per (facet, row, col) over seeds, with paired tests and the best_of row.

    records: finished runs as from :func:`collect` (keys role, labels, seed, mae, r2). Returns cell
    dicts (see ``CSV_FIELDS`` plus ``mae_by_seed``) ordered by facet, row, column.
    """
    check_spec(spec)
    groups: dict[tuple, list[dict]] = {}
    for r in (r for r in records if selected(r, spec)):
        key = (run_value(r, spec["facet"]) if spec.get("facet") else None, row_value(r, spec["rows"]),
               run_value(r, spec["cols"]))
        groups.setdefault(key, []).append(r)
    cells = {k: {"table": spec["name"], "facet": k[0], "row": k[1], "col": k[2], "label": str(k[1]),
                 "derived": False, "best_row": None} | _cell(rs) for k, rs in groups.items()}
    base = _hashable((spec.get("baseline") or {}).get(spec["rows"]))
    for (f, _, c), cell in cells.items():
        ref = cells.get((f, base, c)) if spec.get("baseline") else None
        pct, p, n_paired = paired(cell, ref) if ref else (math.nan, math.nan, 0)
        cell.update(d_mae_pct=pct, p_value=p, n_paired=n_paired, ratio=1 + pct / 100)
    _mark_best(cells)
    derived = _best_of(cells, spec)
    return _ordered(list(cells.values()) + derived, spec)


def _columns(cells) -> dict[tuple, list[dict]]:
    out: dict[tuple, list[dict]] = {}
    for c in cells:
        out.setdefault((c["facet"], c["col"]), []).append(c)
    return out


def _mae(c: dict) -> float:
    """Sort key: mean MAE, a diverged (NaN) cell last."""
    return c["mae_mean"] if math.isfinite(c["mae_mean"]) else math.inf


def _mark_best(cells: dict) -> None:
    for group in _columns(cells.values()).values():
        best = min(group, key=_mae)
        for c in group:
            c["is_best"] = c is best and math.isfinite(c["mae_mean"])


def _best_of(cells: dict, spec: dict) -> list[dict]:
    """Derived row: per (facet, col) a copy of the eligible row with the lowest mean MAE."""
    if not spec.get("best_of"):
        return []
    bo = spec["best_of"]
    name, skip = bo.get("label", "best"), {_hashable(x) for x in bo.get("exclude", [])}
    out = []
    for group in _columns(cells.values()).values():
        eligible = [c for c in group if c["row"] not in skip]
        if eligible:
            src = min(eligible, key=_mae)
            out.append(src | {"row": name, "label": f"{name} ({src['row']})", "derived": True,
                              "best_row": src["row"], "is_best": False})
    return out


def _ordered(cells: list[dict], spec: dict) -> list[dict]:
    base = _hashable((spec.get("baseline") or {}).get(spec["rows"]))
    last = (spec.get("best_of") or {}).get("label", "best") if spec.get("best_of") else None
    facets = _order([c["facet"] for c in cells])
    rows = _order([c["row"] for c in cells], spec.get("row_order"), first=base, last=last)
    cols = _order([c["col"] for c in cells], spec.get("col_order"))
    for c in cells:
        c["col_rank"] = cols.index(c["col"])  # the grid keeps this order even where a row lacks a column
    return sorted(cells, key=lambda c: (facets.index(c["facet"]), rows.index(c["row"]), c["col_rank"]))


# ----------------------------------------------------------------------------- text

def _decimals(x: float) -> int:
    """Decimals that show three significant digits of x."""
    return 3 if not math.isfinite(x) or x == 0 else max(0, 2 - math.floor(math.log10(abs(x))))


def cell_text(c: dict, baseline_row=None) -> str:
    """``0.123 ± 0.010 (n=5)`` and, against a baseline, ``, −12% p=0.003``."""
    d = _decimals(c["mae_mean"])
    text = (f"{c['mae_mean']:.{d}f} (n=1, no CI)" if c["no_ci"]
            else f"{c['mae_mean']:.{d}f} ± {c['mae_ci']:.{d}f} (n={c['n']})")
    if baseline_row is not None and c["row"] == baseline_row and not c["derived"]:
        text += ", baseline"
    elif math.isfinite(c.get("d_mae_pct", math.nan)):
        pct = f"{c['d_mae_pct']:+.0f}%".replace("-", MINUS)
        text += f", {pct} " + (f"p={c['p_value']:.2g}" if math.isfinite(c["p_value"]) else "p n/a")
    return f"**{text}**" if c.get("is_best") else text


def table_markdown(cells: list[dict], spec: dict) -> str:
    """Rows × columns per facet value; the best real row of each column in bold."""
    if not cells:
        return "_no finished runs in this table yet_\n"
    base = _hashable((spec.get("baseline") or {}).get(spec["rows"]))
    blocks = []
    for facet in dict.fromkeys(c["facet"] for c in cells):
        rows, cols, at = _grid(cells, facet)
        lines = [f"**{spec['facet']} = {facet}**", ""] if spec.get("facet") else []
        lines += [f"| {spec['rows']} \\ {spec['cols']} | " + " | ".join(map(str, cols)) + " |",
                  "|---" * (len(cols) + 1) + "|"]
        for row in rows:
            head = _row_head(row, cols, at)
            texts = [_derived_text(at[row, col], base, head) if (row, col) in at else "—" for col in cols]
            lines.append(f"| {head} | " + " | ".join(texts) + " |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def _row_head(row, cols: list, at: dict) -> str:
    """Row label; a derived row whose source is the same in every column names it, e.g. ``best (k_vrh)``."""
    srcs = {at[row, col]["best_row"] for col in cols if (row, col) in at}
    return f"{row} ({srcs.pop()})" if len(srcs) == 1 and None not in srcs else str(row)


def _derived_text(c: dict, base, head: str) -> str:
    text = cell_text(c, base)
    return text + f"; via {c['best_row']}" if c["derived"] and head == str(c["row"]) else text


def cells_csv(cells: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore")
    w.writeheader()
    for c in cells:
        w.writerow({k: json.dumps(c[k]) if isinstance(c[k], (list, tuple)) else c[k] for k in CSV_FIELDS})
    return buf.getvalue()


# ----------------------------------------------------------------------------- figures

def _grid(cells: list[dict], facet) -> tuple[list, list, dict]:
    fc = [c for c in cells if c["facet"] == facet]
    rows = list(dict.fromkeys(c["row"] for c in fc))
    cols = sorted(dict.fromkeys(c["col"] for c in fc), key=lambda col: next(
        c.get("col_rank", 0) for c in fc if c["col"] == col))
    return rows, cols, {(c["row"], c["col"]): c for c in fc}


def _ratios(rows, cols, at, has_baseline: bool) -> np.ndarray:
    """MAE / baseline MAE; without a baseline, MAE / the column's median over real rows."""
    mae = np.array([[at[r, c]["mae_mean"] if (r, c) in at else np.nan for c in cols] for r in rows])
    if has_baseline:
        return np.array([[at[r, c]["ratio"] if (r, c) in at else np.nan for c in cols] for r in rows])
    real = np.array([[(r, c) in at and not at[r, c]["derived"] for c in cols] for r in rows])
    with warnings.catch_warnings():  # an all-NaN column stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        return mae / np.nanmedian(np.where(real, mae, np.nan), axis=0, keepdims=True)


def _span(cells: list[dict], spec: dict) -> float:
    """Colour range [1/m, m] shared by all facets, so that equal colours mean equal ratios."""
    facets = dict.fromkeys(c["facet"] for c in cells)
    ratios = [_ratios(*_grid(cells, f), bool(spec.get("baseline"))) for f in facets]
    finite = np.concatenate([r[np.isfinite(r) & (r > 0)] for r in ratios])
    return max([1.05, *finite, *(1 / finite)])


def _heatmap(ax, cells, facet, spec, m: float) -> object:
    from matplotlib.colors import LogNorm
    from matplotlib.patches import Rectangle

    rows, cols, at = _grid(cells, facet)
    ratio = _ratios(rows, cols, at, bool(spec.get("baseline")))
    norm = LogNorm(1 / m, m)  # centred at 1 in log: ×2 and ÷2 equally dark; blue beats the reference
    im = ax.imshow(np.ma.masked_invalid(ratio), cmap="RdBu_r", norm=norm, aspect="auto")
    ylabels = [_row_head(r, cols, at) for r in rows]
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            if (r, c) not in at:
                continue
            cell, shade = at[r, c], norm(ratio[i, j])
            via = f"\n{cell['best_row']}" if cell["derived"] and ylabels[i] == str(r) else ""
            ax.text(j, i, f"{ratio[i, j]:.2f}\nn={cell['n']}{via}", ha="center", va="center", fontsize=7,
                    color="white" if np.ma.is_masked(shade) or not 0.2 < shade < 0.8 else "black")
            if cell.get("is_best"):  # best real row of the column, as in Devi, Butler & Sai Gautam
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, lw=2.2, ec="black"))
    ax.set_xticks(range(len(cols)), [str(c) for c in cols], rotation=40, ha="right", fontsize=7)
    ax.set_yticks(range(len(rows)), ylabels, fontsize=7)
    ax.set(xlabel=spec["cols"], ylabel=spec["rows"])
    return im


def _bars(ax, cells, facet, spec) -> None:
    rows, cols, at = _grid(cells, facet)
    width = 0.8 / len(rows)
    for i, r in enumerate(rows):
        xs = [j + (i - (len(rows) - 1) / 2) * width for j, c in enumerate(cols) if (r, c) in at]
        got = [at[r, c] for c in cols if (r, c) in at]
        ax.bar(xs, [c["mae_mean"] for c in got], width, yerr=[np.nan_to_num(c["mae_ci"]) for c in got],
               capsize=2, label=str(r))
        for x, c in zip(xs, got, strict=True):
            ax.text(x, c["mae_mean"] + np.nan_to_num(c["mae_ci"]), f"n={c['n']}", ha="center", va="bottom",
                    fontsize=6)
    ax.set_xticks(range(len(cols)), [str(c) for c in cols], rotation=40, ha="right", fontsize=7)
    ax.set(xlabel=spec["cols"], ylabel="test MAE (mean ± 95% CI)")
    ax.legend(fontsize=6, title=spec["rows"], title_fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))


def plot_table(cells: list[dict], spec: dict, path: Path) -> None:
    """Heatmap of MAE ratios (``heatmap: true``) or grouped bars with CI, one subplot per facet."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    facets = list(dict.fromkeys(c["facet"] for c in cells))
    nr = max(len(_grid(cells, f)[0]) for f in facets)
    nc = max(len(_grid(cells, f)[1]) for f in facets)
    size = (1.0 * nc + 2.8, 0.45 * nr + 1.8) if spec.get("heatmap") else (0.5 * nc * nr + 4.0, 3.6)
    fig, axes = plt.subplots(1, len(facets), figsize=(size[0] * len(facets), size[1]), squeeze=False)
    for ax, facet in zip(axes[0], facets, strict=True):
        if spec.get("heatmap"):
            im = _heatmap(ax, cells, facet, spec, _span(cells, spec))
            ref = "baseline" if spec.get("baseline") else "column median"
            bar = fig.colorbar(im, ax=ax, label=f"MAE / {ref} MAE", shrink=0.8)
            lo, hi = im.norm.vmin, im.norm.vmax
            bar.set_ticks([t for t in (0.25, 0.5, 0.67, 1, 1.5, 2, 4) if lo <= t <= hi])
            bar.ax.yaxis.set_major_formatter("{x:g}")
            bar.minorticks_off()
        else:
            _bars(ax, cells, facet, spec)
        if spec.get("facet"):
            ax.set_title(f"{spec['facet']} = {facet}", fontsize=9)
    for ax in axes[0][1:]:
        ax.set_ylabel("")
    fig.suptitle(spec.get("title") or spec["name"], fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    _atomic(path, buf.getvalue())


# ----------------------------------------------------------------------------- report

def _atomic(path: Path, data: bytes | str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data if isinstance(data, bytes) else data.encode())
    os.replace(tmp, path)


NOTE = ("Every cell is the mean test MAE over seeds ± the 95% CI half-width (Student t) with its seed count "
        "n; n=1 cells carry no CI. Changes are against the baseline row of the same column, paired by seed "
        "(ratio of mean MAEs over the shared seeds); p is a paired t-test (scipy ttest_rel), n/a with fewer "
        "than 2 shared seeds. The best row of each column is in bold (boxed in heatmaps).")


def report_study(plan_dir: str | Path, results_dir: str | Path) -> dict:
    """Write ``<name>.{csv,md,png}`` per table of ``meta.tables`` and ``summary.md`` into results_dir.

    Returns {"text": summary markdown, "tables": {name: list of cell dicts}}.
    """
    plan = load_study(plan_dir)
    specs = (plan.get("meta") or {}).get("tables") or []
    for spec in specs:
        check_spec(spec)
    records = collect(plan)
    out = Path(results_dir)
    out.mkdir(parents=True, exist_ok=True)
    command = f"{plan['command']}` then `" if plan.get("command") else ""
    lines = [f"# Transfer study `{plan.get('study', Path(plan_dir).name)}`", "",
             f"Made by `{command}python -m crysbench transfer report {plan_dir}`.", "",
             f"{_finished(plan)} of {len(plan['runs'])} runs finished.", "", NOTE, ""]
    tables = {}
    for spec in specs:
        cells = tables[spec["name"]] = cell_stats(records, spec)
        md = table_markdown(cells, spec)
        _atomic(out / f"{spec['name']}.csv", cells_csv(cells))
        _atomic(out / f"{spec['name']}.md", md)
        planned = sum(selected(r, spec) for r in plan["runs"])
        done = sum(selected(r, spec) for r in records)
        lines += [f"## {spec.get('title') or spec['name']}", "",
                  f"{done} of {planned} selected runs finished.", "", md]
        if cells:
            plot_table(cells, spec, out / f"{spec['name']}.png")
            lines += [f"![{spec['name']}]({spec['name']}.png)", ""]
    if not specs:
        lines.append("_the plan lists no tables (meta.tables)_")
    text = "\n".join(lines).rstrip() + "\n"
    _atomic(out / "summary.md", text)
    return {"text": text, "tables": tables}
