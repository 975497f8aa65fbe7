"""Data-path benchmarks of the HDF5 graph store (issue 3): ingest speed, batch loading, bounded memory.

    python benchmarks/bench_ingest.py --out results/data             # all three, ~5 min on 2 cores
    python benchmarks/bench_ingest.py --out /tmp/d --only ingest --quick   # smoke run

* ingest: structures/s of ``crysbench ingest`` (parse + validate + spglib + 8 Å / 12-NN graph + HDF5
  write) against a per-structure pymatgen CGCNN-style featurizer (parse the CIF, get_all_neighbors
  within 8 Å, sort, keep the 12 nearest, Gaussian-expand the distances, one-hot atom features, keep the
  arrays in Python lists), both from the same files of built-in structures, one thread, same process.
  Before timing, the 12 nearest distances of every atom are checked to agree between the two.
* loading: what the trainer does (crysbench.train.data batches, num_workers=0): time to read and
  collate each batch against one CGCNN step (forward, loss, backward, optimizer) on that batch.
* memory: peak RSS of a fresh process that trains a fixed number of steps on the built-in store and
  on copies of it replicated 10x and 20x (each in its own subprocess).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from unittest import mock

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
CUTOFF, K_NEAREST, GAUSS_STEP = 8.0, 12, 0.2  # Å, neighbours, Å (CGCNN's defaults)
SPLIT = "s0-v100-t100"  # the split name crysbench.train.data uses for the default DataConfig


# ---------------------------------------------------------------------------------------------
# inputs: built-in structures written as a CGCNN folder (id_prop.csv + CIFs) and as one extxyz file
# ---------------------------------------------------------------------------------------------
def builtin_structures(n: int, supercell: int = 1) -> list[tuple[str, object, dict]]:
    """(id, pymatgen Structure, targets) of the first ``n`` built-in labelled records."""
    from pymatgen.core import Lattice, Structure

    from crysbench.builtin import records

    out = []
    for r in itertools.islice(records("labelled"), n):
        s = Structure(Lattice(r.cell), r.numbers.tolist(), r.positions, coords_are_cartesian=True)
        out.append((r.id, s * supercell if supercell > 1 else s, r.targets))
    return out


def write_sources(items, folder: Path) -> tuple[Path, Path]:
    """The same crystals as a CGCNN folder and as an extxyz file (targets as info keys)."""
    from ase.io import write
    from pymatgen.io.ase import AseAtomsAdaptor
    from pymatgen.io.cif import CifWriter

    cg = folder / "cgcnn"
    cg.mkdir(parents=True)
    rows, frames = [], []
    for cid, s, targets in items:
        CifWriter(s).write_file(cg / f"{cid}.cif")
        rows.append(f"{cid},{targets['chgnet_formation_energy_per_atom']}")
        atoms = AseAtomsAdaptor.get_atoms(s)
        atoms.info = {"id": cid, **targets}
        frames.append(atoms)
    (cg / "id_prop.csv").write_text("\n".join(rows) + "\n")
    write(folder / "crystals.extxyz", frames, format="extxyz")
    return cg, folder / "crystals.extxyz"


# ---------------------------------------------------------------------------------------------
# the peer: per-structure CGCNN-style featurization with pymatgen
# ---------------------------------------------------------------------------------------------
class PymatgenCGCNN:
    """Per structure: atom features [n, 100] one-hot of Z, neighbour ids [n, 12], Gaussian-expanded
    neighbour distances [n, 12, 41] (0-8 Å, 0.2 Å step), target; atoms with < 12 neighbours padded."""

    def __init__(self, max_z: int = 100) -> None:
        self.onehot = np.eye(max_z, dtype=np.float32)
        self.centres = np.arange(0.0, CUTOFF + GAUSS_STEP / 2, GAUSS_STEP)

    def __call__(self, structure, target: float) -> tuple:
        atom_fea = np.stack([self.onehot[site.specie.Z - 1] for site in structure])
        nbr_idx, nbr_dist = [], []
        for nbrs in structure.get_all_neighbors(CUTOFF, include_index=True):
            nbrs = sorted(nbrs, key=lambda nb: nb.nn_distance)[:K_NEAREST]
            pad = K_NEAREST - len(nbrs)
            nbr_idx.append([nb.index for nb in nbrs] + [0] * pad)
            nbr_dist.append([nb.nn_distance for nb in nbrs] + [CUTOFF + 1.0] * pad)
        dist = np.asarray(nbr_dist)
        nbr_fea = np.exp(-((dist[..., None] - self.centres) ** 2) / GAUSS_STEP**2)
        return atom_fea, np.asarray(nbr_idx), nbr_fea, target

    def from_folder(self, folder: Path) -> list[tuple]:
        """What CGCNN's dataset does for every item: read the CIF, then featurize."""
        from pymatgen.core import Structure

        out = []
        for line in (folder / "id_prop.csv").read_text().split():
            cid, target = line.split(",")
            out.append(self(Structure.from_file(folder / f"{cid}.cif"), float(target)))
        return out


def check_graphs_agree(store: Path, peer: list[tuple], tol: float = 1e-6) -> int:
    """The 12 nearest distances of every atom: stored crysbench graph vs the peer. Returns atoms checked."""
    from crysbench.store.loader import StoreDataset

    ds = StoreDataset(store)
    recs = ds.__getitems__(list(range(len(ds))))
    checked = 0
    for rec, (_, _, nbr_fea, _) in zip(recs, peer, strict=True):
        pos, cell, (i, j), sh = rec["positions"], rec["cell"], rec["edge_index"].T, rec["shifts"]
        d = np.linalg.norm(pos[j] + sh @ cell - pos[i], axis=1)
        for a in range(len(pos)):
            ours = np.sort(d[i == a])[:K_NEAREST]
            theirs = nbr_fea[a, : len(ours)]  # compared through the Gaussian expansion of ours
            mine = np.exp(-((ours[:, None] - np.arange(0.0, CUTOFF + GAUSS_STEP / 2, GAUSS_STEP)) ** 2)
                          / GAUSS_STEP**2)
            err = float(np.abs(mine - theirs).max()) if len(ours) else 0.0
            if err > tol:
                raise AssertionError(f"crystal {rec['index']} atom {a}: 12-NN Gaussian features differ by "
                                     f"{err:.2e} > {tol} between crysbench and pymatgen")
            checked += 1
    return checked


def stage_times(cg: Path, xyz: Path, tmp: Path) -> dict:
    """Seconds per stage, for both sides: where the time of an ingest / a featurization goes."""
    from pymatgen.core import Structure

    from crysbench.data.readers import read
    from crysbench.store import GraphSpec
    from crysbench.store import shard as shard_mod

    def clock(fn):
        t0 = time.perf_counter()
        out = fn()
        return out, time.perf_counter() - t0

    out = {}
    crystals, out["crysbench read+validate extxyz"] = clock(lambda: list(read(xyz, "extxyz")))
    _, out["crysbench read+validate cgcnn (CIF)"] = clock(lambda: list(read(cg, "cgcnn")))
    names = sorted({k for c in crystals for k in c.targets})
    arrays, out["crysbench assemble arrays"] = clock(lambda: shard_mod.assemble(crystals, 0, names)[0])
    ptr = arrays["atom_ptr"]
    _, out["crysbench spglib"] = clock(lambda: [shard_mod.symmetry_labels(
        arrays["cells"][b], arrays["positions"][ptr[b]:ptr[b + 1]], arrays["numbers"][ptr[b]:ptr[b + 1]],
        arrays["pbc"][b]) for b in range(len(crystals))])
    spec = GraphSpec(CUTOFF, K_NEAREST, triplets=False)
    with mock.patch.object(shard_mod, "symmetry_labels", lambda *a: (0, -1)):  # graphs alone: spglib above
        _, out["crysbench 8 A / 12-NN graphs"] = clock(lambda: shard_mod.add_graphs(arrays, spec))
    _, out["crysbench HDF5 write"] = clock(lambda: shard_mod.write_shard(str(tmp / "stage.h5"), arrays, spec,
                                                                         names, 0))
    lines = (cg / "id_prop.csv").read_text().split()
    structures, out["pymatgen CIF parse"] = clock(
        lambda: [Structure.from_file(cg / f"{line.split(',')[0]}.cif") for line in lines])
    peer = PymatgenCGCNN()
    _, out["pymatgen 8 A neighbours + 12-NN + features"] = clock(lambda: [peer(st, 0.0) for st in structures])
    return out


def bench_ingest(n: int, rounds: int, supercell: int, tmp: Path) -> dict:
    from crysbench.store import GraphSpec
    from crysbench.store.cli import ingest

    items = builtin_structures(n, supercell)
    cg, xyz = write_sources(items, tmp / f"src{supercell}")
    peer = PymatgenCGCNN()
    spec = GraphSpec(CUTOFF, K_NEAREST, triplets=False)
    runs = {
        "pymatgen CGCNN featurize (CIF)": lambda r: peer.from_folder(cg),
        "crysbench ingest --format cgcnn (CIF)": lambda r: ingest(cg, "cgcnn", tmp / f"c{supercell}{r}",
                                                                  spec),
        "crysbench ingest --format extxyz": lambda r: ingest(xyz, "extxyz", tmp / f"x{supercell}{r}", spec),
    }
    times: dict[str, list[float]] = {k: [] for k in runs}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pymatgen's CIF rounding notes, one per file
        ingest(cg, "cgcnn", tmp / f"check{supercell}", spec)
        checked = check_graphs_agree(tmp / f"check{supercell}", peer.from_folder(cg))
        for r in range(rounds):  # interleaved, so background load hits every contender alike
            for name, fn in runs.items():
                t0 = time.perf_counter()
                fn(r)
                times[name].append(time.perf_counter() - t0)
        stages = stage_times(cg, xyz, tmp)
    atoms = sum(len(s) for _, s, _ in items)
    rows = []
    base = n / statistics.median(times["pymatgen CGCNN featurize (CIF)"])
    for name, ts in times.items():
        rate = n / statistics.median(ts)
        rows.append({"contender": name, "median_s": statistics.median(ts), "all_s": ts,
                     "structures_per_s": rate, "speedup_vs_pymatgen": rate / base})
    return {"n_structures": n, "supercell": supercell, "atoms_per_structure": atoms / n, "rounds": rounds,
            "threads": torch.get_num_threads(), "atoms_checked_equal": checked, "rows": rows,
            "stages_ms_per_structure": {k: 1e3 * v / n for k, v in stages.items()}}


# ---------------------------------------------------------------------------------------------
# loading vs training step, and peak memory (the latter in a child process per store)
# ---------------------------------------------------------------------------------------------
def _trainer(store: str, batch_size: int):
    from crysbench import distributed
    from crysbench.train.config import DataConfig, OptimConfig, RunConfig
    from crysbench.train.data import make_run_data
    from crysbench.train.loop import build_model
    from crysbench.train.schedule import make_scheduler

    cfg = RunConfig(data=DataConfig(store=store, batch_size=batch_size))
    data = make_run_data(cfg.data, distributed.detect(), seed=0)
    model = build_model(cfg, len(data.target_names))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.max_lr)
    return cfg, data, model, opt, make_scheduler(opt, OptimConfig(), 10_000)


def time_steps(store: str, steps: int, batch_size: int, warmup: int = 3) -> dict:
    """Per batch: seconds to load + collate it (the trainer's iterator), seconds for one CGCNN step."""
    from crysbench.train.loop import optimizer_step
    from crysbench.train.metrics import masked_loss

    cfg, data, model, opt, sched = _trainer(store, batch_size)
    model.train()
    load, step, atoms = [], [], []
    it = iter(data.train_batches(0))
    for _ in range(steps + warmup):
        t0 = time.perf_counter()
        batch = next(it)
        t1 = time.perf_counter()
        pred = model(batch)
        loss = masked_loss(pred.float(), data.normalizer.norm(batch.targets).float(), batch.mask, "l1")
        optimizer_step(loss, opt, sched, None, list(model.parameters()), cfg.optim.grad_clip)
        t2 = time.perf_counter()
        load.append(t1 - t0)
        step.append(t2 - t1)
        atoms.append(batch.num_atoms)
    load, step = load[warmup:], step[warmup:]
    return {"store": store, "batch_size": batch_size, "model": f"{cfg.model.name}-{cfg.model.size}",
            "steps": steps, "threads": torch.get_num_threads(), "mean_atoms_per_batch": float(np.mean(atoms)),
            "load_ms_median": 1e3 * statistics.median(load), "load_ms_mean": 1e3 * statistics.mean(load),
            "step_ms_median": 1e3 * statistics.median(step), "step_ms_mean": 1e3 * statistics.mean(step),
            "load_fraction_of_step": sum(load) / sum(step)}


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def memory_child(store: str, steps: int, batch_size: int) -> dict:
    """Run in a fresh process: RSS before/after set-up, then peak RSS (ru_maxrss) after the steps."""
    import resource

    rss0 = _rss_mb()
    out = time_steps(store, steps, batch_size)
    out.update(rss_start_mb=rss0, rss_end_mb=_rss_mb(),
               peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return out


def replicate_store(src: Path, dst: Path, factor: int) -> Path:
    """A store of ``factor`` copies of ``src``'s shards (real files) with a matching manifest and split."""
    from crysbench.store import open_store
    from crysbench.store.manifest import MANIFEST, shard_name, write_json_atomic
    from crysbench.store.splits import make_split

    m = json.loads((src / MANIFEST).read_text())
    dst.mkdir(parents=True)
    shards = []
    for _ in range(factor):
        for s in m["shards"]:
            entry = {**s, "file": shard_name(len(shards))}
            shutil.copyfile(src / s["file"], dst / entry["file"])
            shards.append(entry)
    for key in ("n_crystals", "n_atoms", "n_edges", "n_triplets"):
        m[key] *= factor
    m.update(shards=shards, splits={})
    write_json_atomic(dst / MANIFEST, m)
    open_store(dst)  # every copy verifies against the manifest
    make_split(dst, SPLIT, fractions=(0.8, 0.1, 0.1), seed=0, dedup=False)  # copies are duplicates by design
    return dst


def bench_memory(store: Path, factors: list[int], steps: int, batch_size: int, tmp: Path) -> list[dict]:
    rows = []
    for f in factors:
        path = store if f == 1 else replicate_store(store, tmp / f"replicated-{f}x", f)
        cmd = [sys.executable, __file__, "_memory-child", str(path), "--steps", str(steps),
               "--batch-size", str(batch_size)]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        size = sum(p.stat().st_size for p in path.glob("shard-*.h5"))
        n_crystals = json.loads((path / "manifest.json").read_text())["n_crystals"]
        row.update(factor=f, store_mb=size / 2**20, n_crystals=n_crystals)
        rows.append(row)
        if f != 1:
            shutil.rmtree(path)
    return rows


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------
def markdown(report: dict) -> str:
    """results/data/README.md from a report: the command, the machine, one table per measurement."""
    prov = report["provenance"]
    lines = [f"# Data-path benchmarks on `{prov['machine']}`", "",
             f"Made by `{report['command']}` at commit `{prov['commit'][:12]}`"
             f"{' (uncommitted changes)' if prov['dirty'] else ''}; torch {prov['versions']['torch']}, "
             f"pymatgen {prov['versions'].get('pymatgen', '?')}. Load average at the start: "
             f"{', '.join(f'{x:.1f}' for x in report['load'])} (two nice'd training jobs shared the 2 cores "
             "the whole time, so absolute times are noisy; every ratio compares contenders run "
             "interleaved in the same process).", ""]
    for key, commit in report.get("kept_from_earlier_run", {}).items():
        lines += [f"The {key} section was not rerun: it is kept from the run at commit `{commit[:12]}`.", ""]
    for block in report.get("ingest", []):
        cells = f" as {block['supercell']}x{block['supercell']}x{block['supercell']} supercells" \
            if block["supercell"] > 1 else ""
        lines += [f"## Ingest: {block['n_structures']} built-in structures{cells}"
                  f" ({block['atoms_per_structure']:.1f} atoms each), {block['threads']} thread, "
                  f"median of {block['rounds']} rounds", "",
                  "Graphs checked equal first: the 12 nearest distances of all "
                  f"{block['atoms_checked_equal']} atoms agree with pymatgen's.", "",
                  "| contender | structures/s | speed-up vs pymatgen (target >= 20) |", "|---|---:|---:|"]
        lines += [f"| {r['contender']} | {r['structures_per_s']:.1f} | {r['speedup_vs_pymatgen']:.2f} |"
                  for r in block["rows"]]
        lines += ["", "| stage | ms / structure |", "|---|---:|"]
        lines += [f"| {k} | {v:.3f} |" for k, v in block["stages_ms_per_structure"].items()]
        lines.append("")
    if "loading" in report:
        lines += ["## Batch loading vs one CGCNN training step (built-in store, trainer's batches)", "",
                  "| threads | model | batch | atoms/batch | load ms (median) | step ms (median) | "
                  "load / step (target <= 0.10) |", "|---:|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['threads']} | {r['model']} | {r['batch_size']} | {r['mean_atoms_per_batch']:.0f} | "
                  f"{r['load_ms_median']:.1f} | {r['step_ms_median']:.1f} | "
                  f"{r['load_fraction_of_step']:.3f} |" for r in report["loading"]]
        lines.append("")
    if "memory" in report:
        lines += ["## Peak memory of a training process vs store size (fresh process each)", "",
                  "| store | crystals | shard MB | RSS after imports MB | peak RSS MB | load ms | step ms "
                  "| load / step |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['factor']}x | {r['n_crystals']} | {r['store_mb']:.0f} | {r['rss_start_mb']:.0f} | "
                  f"{r['peak_rss_mb']:.0f} | {r['load_ms_median']:.1f} | {r['step_ms_median']:.1f} | "
                  f"{r['load_fraction_of_step']:.3f} |" for r in report["memory"]]
        lines.append("")
    return "\n".join(lines)


def _keep_other_sections(report: dict, previous: Path) -> None:
    """With ``--only``, carry the sections not rerun over from the earlier report (noting its commit)."""
    if not previous.is_file():
        return
    old = json.loads(previous.read_text())
    for key in ("ingest", "loading", "memory"):
        if key not in report and key in old:
            report[key] = old[key]
            report.setdefault("kept_from_earlier_run", {})[key] = old["provenance"]["commit"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="results/data", help="folder for <machine>.json and <machine>.md")
    p.add_argument("--only", nargs="*", choices=("ingest", "loading", "memory"),
                   default=["ingest", "loading", "memory"])
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks the script, not the numbers")
    p.add_argument("--n", type=int, default=300, help="structures for the ingest benchmark")
    p.add_argument("--steps", type=int, default=40, help="training steps timed (loading and memory)")
    p.add_argument("--batch-size", type=int, default=64, help="crystals per batch (DataConfig default)")
    p.add_argument("--render", metavar="JSON", help="only rewrite <machine>.md from an earlier report")
    args = p.parse_args(argv)
    if args.render:
        path = Path(args.render)
        path.with_suffix(".md").write_text(markdown(json.loads(path.read_text())))
        return 0
    from crysbench.bench_report import provenance
    from crysbench.builtin import builtin_store

    default_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the peer is single-threaded: compare per core
    n, steps = (20, 5) if args.quick else (args.n, args.steps)
    cache = Path(os.environ.get("CRYSBENCH_CACHE", Path.home() / ".cache" / "crysbench"))
    report: dict = {"command": "python " + " ".join([f"benchmarks/{Path(__file__).name}", *sys.argv[1:]]),
                    "provenance": provenance(), "load": os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if "ingest" in args.only:
            report["ingest"] = [bench_ingest(n, 1 if args.quick else 3, 1, tmp),
                                bench_ingest(max(n // 3, 5), 1 if args.quick else 2, 2, tmp)]
        store = builtin_store(cache)
        if "loading" in args.only:  # on 1 thread, and on torch's default (what the trainer uses)
            report["loading"] = [time_steps(str(store), steps, args.batch_size)]
            torch.set_num_threads(default_threads)
            report["loading"].append(time_steps(str(store), steps, args.batch_size))
            torch.set_num_threads(1)
        if "memory" in args.only:
            report["memory"] = bench_memory(store, [1, 2] if args.quick else [1, 10, 20], steps,
                                            args.batch_size, tmp)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = report["provenance"]["machine"] + ("-quick" if args.quick else "")
    _keep_other_sections(report, out / f"{name}.json")
    (out / f"{name}.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / f"{name}.md").write_text(markdown(report))
    print(json.dumps({k: report[k] for k in ("ingest", "loading", "memory") if k in report}, indent=1))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_memory-child":
        a = argparse.ArgumentParser()
        a.add_argument("store")
        a.add_argument("--steps", type=int)
        a.add_argument("--batch-size", type=int)
        ns = a.parse_args(sys.argv[2:])
        torch.set_num_threads(1)
        print(json.dumps(memory_child(ns.store, ns.steps, ns.batch_size)))
        sys.exit(0)
    sys.exit(main())
