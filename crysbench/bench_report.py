"""Kernel benchmark report: run benchmarks/ under pytest-benchmark, then write
``results/kernels/<machine>.json`` (raw timings + provenance) and ``<machine>.md`` (a table of
median times and ratios against crysbench in each group).

Conventions the benchmark files follow: one pytest-benchmark ``group`` per input case; each
benchmark sets ``extra_info["impl"]`` (e.g. "crysbench", "vesin", "torch index_add_") and
``extra_info["threads"]``. The baseline of a group is its fastest crysbench entry.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path


def machine_name() -> str:
    """A short, file-safe name for this machine: accelerator if any, else CPU model and cores."""
    try:
        import torch

        if torch.cuda.is_available():
            return _slug(torch.cuda.get_device_name(0))
    except ImportError:
        pass
    model = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1]
                break
    except OSError:
        pass
    return _slug(f"{model}-{os.cpu_count()}core")


def _slug(text: str) -> str:
    text = re.sub(r"\(R\)|\(TM\)|CPU|Processor|@.*?GHz", "", text)
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def provenance() -> dict:
    """Commit, package versions and machine, stored beside every result."""
    import torch

    def _git(*args):
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return "unknown"

    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for mod in ("numpy", "vesin", "pymatgen.core", "matscipy", "ase", "torch_scatter"):
        try:
            m = __import__(mod, fromlist=["__version__"])
            versions[mod.split(".")[0]] = getattr(m, "__version__", "?")
        except ImportError:
            pass
    return {
        "commit": _git("rev-parse", "HEAD"),
        "dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "machine": machine_name(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "versions": versions,
    }


def summarize(bench_json: dict) -> list[dict]:
    """One row per benchmark: group, impl, threads, median/min seconds, ratio vs crysbench."""
    rows = []
    for b in bench_json.get("benchmarks", []):
        info = b.get("extra_info", {})
        rows.append({
            "group": b.get("group") or (info.get("input") and f"neighbor_list {info['input']}") or b["name"],
            "name": b["name"],
            "impl": info.get("impl") or info.get("peer") or b["name"],
            "threads": info.get("threads"),
            "median_s": b["stats"]["median"],
            "min_s": b["stats"]["min"],
            "rounds": b["stats"]["rounds"],
            "extra_info": info,
        })
    return add_ratios(rows)


def add_ratios(rows: list[dict]) -> list[dict]:
    """ratio = median / the fastest crysbench entry of the group run with the same thread count
    (any thread count when there is none), so 1-thread peers compare with 1-thread crysbench."""
    for group in {r["group"] for r in rows}:
        members = [r for r in rows if r["group"] == group]
        ours = [r for r in members if "crysbench" in str(r["impl"])]
        for r in members:
            same = [o for o in ours if o["threads"] == r["threads"]] or ours
            base = min(same, key=lambda o: o["median_s"]) if same else None
            r["ratio_vs_crysbench"] = r["median_s"] / base["median_s"] if base else None
    return sorted(rows, key=lambda r: (r["group"], r["median_s"]))


def rewrite_markdown(json_path: Path) -> None:
    """Re-derive groups, ratios and the markdown table from a report JSON (no re-timing)."""
    report = json.loads(Path(json_path).read_text())
    for r in report["rows"]:
        info = r["extra_info"]
        r["group"] = info.get("input") and f"neighbor_list {info['input']}" or r["group"]
        r["impl"] = info.get("impl") or info.get("peer") or r["impl"]
    report["rows"] = add_ratios(report["rows"])
    _atomic_write(Path(json_path), json.dumps(report, indent=1, default=str))
    _atomic_write(Path(json_path).with_suffix(".md"),
                  markdown_table(report["rows"], report["command"], report["provenance"]))


def markdown_table(rows: list[dict], command: str, prov: dict) -> str:
    lines = [
        f"# Kernel benchmarks on `{prov['machine']}`",
        "",
        f"Made by `{command}` at commit `{prov['commit'][:12]}`"
        f"{' (uncommitted changes)' if prov['dirty'] else ''}; torch {prov['versions'].get('torch')}.",
        "Median wall time per call; *ratio* = that time / the fastest crysbench entry of the group",
        "(above 1 means crysbench is faster by that factor).",
        "",
        "| case | implementation | threads | median (ms) | ratio |",
        "|---|---|---:|---:|---:|",
    ]
    for r in rows:
        ratio = f"{r['ratio_vs_crysbench']:.2f}" if r["ratio_vs_crysbench"] else "-"
        lines.append(f"| {r['group']} | {r['impl']} | {r['threads'] or '-'} | {r['median_s'] * 1e3:.2f} | {ratio} |")
    return "\n".join(lines) + "\n"


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def run_kernel_report(out: str, quick: bool = False, extra: list[str] | None = None) -> int:
    """Run benchmarks/ and write the JSON + markdown report; returns pytest's exit code."""
    out_dir = Path(out)
    env = dict(os.environ, CRYSBENCH_BENCH_QUICK="1" if quick else os.environ.get("CRYSBENCH_BENCH_QUICK", "0"))
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "bench.json"
        cmd = [sys.executable, "-m", "pytest", "benchmarks", "--benchmark-only", "-q", "-p", "no:cacheprovider",
               f"--benchmark-json={raw}", *(extra or [])]
        code = subprocess.run(cmd, env=env).returncode
        if not raw.exists():
            print("crysbench bench-kernels: pytest wrote no benchmark JSON", file=sys.stderr)
            return code or 1
        data = json.loads(raw.read_text())
    prov = provenance()
    command = "python -m crysbench bench-kernels" + (" --quick" if quick else "") + \
        (" " + " ".join(extra) if extra else "")
    rows = summarize(data)
    name = prov["machine"] + ("-quick" if quick else "")
    report = {"command": command, "provenance": prov, "rows": rows, "machine_info": data.get("machine_info")}
    _atomic_write(out_dir / f"{name}.json", json.dumps(report, indent=1, default=str))
    _atomic_write(out_dir / f"{name}.md", markdown_table(rows, command, prov))
    print(f"wrote {out_dir / name}.json and .md ({len(rows)} benchmarks)")
    return code
