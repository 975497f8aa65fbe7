"""Experimental formation enthalpies (pymatgen's ``exp_compounds.json.gz``) placed on AFLOW prototypes.

The file lists ~2,100 compounds with ``exp energy`` in eV per formula unit as written (NaCl:
-4.26 eV = -411 kJ/mol); we divide by the atoms in that formula to get eV/atom. Compounds whose
elements all have dcdft references and whose anonymized formula matches a prototype are kept.
The structure is chosen among the matching prototypes: at most ``MAX_SCREEN`` of them (a seeded
sample when there are more) are ranked by the CGCNN formation-energy teacher, the best
``MAX_CHGNET`` are scored by CHGNet energy per atom, and the lowest wins. Records carry the
experimental target, the physics labels and all teacher labels, so a study can compare teacher and
experiment on the same crystals.
"""

from __future__ import annotations

import gzip
import json
import math
from functools import lru_cache
from pathlib import Path

import numpy as np

from crysbench.datagen import labels as L
from crysbench.datagen import structures as S
from crysbench.datagen.generate import (
    _init_worker,
    _physical,
    count_lines,
    teacher_labels,
    write_jsonl_gz,
)

MAX_SCREEN, MAX_CHGNET = 8, 2
EXP_CHUNK = 250
TARGET = "exp_formation_enthalpy_per_atom"


def exp_compounds_path() -> Path:
    import pymatgen.analysis.compatibility as compat

    return Path(compat.__file__).with_name("exp_compounds.json.gz")


@lru_cache(maxsize=1)
def usable_compounds() -> list[dict]:
    """Compounds with dcdft elements and a matching prototype, sorted by formula, in eV/atom."""
    from pymatgen.core import Composition

    allowed, protos = set(S.dcdft_elements()), S.prototypes()
    with gzip.open(exp_compounds_path(), "rt") as fh:
        raw = json.load(fh)
    out = {}
    for row in raw:
        comp = Composition(row["formula"])
        if not ({e.symbol for e in comp.elements} <= allowed and comp.anonymized_formula in protos):
            continue
        n = comp.num_atoms
        out.setdefault(comp.reduced_formula, {
            "formula": comp.reduced_formula, "mp_id": row.get("mpid"),
            "enthalpy_per_atom": row["exp energy"] / n, "uncertainty_per_atom": row["uncertainty"] / n})
    return [out[k] for k in sorted(out)]


def _candidates(formula: str, rng: np.random.Generator) -> list[int]:
    from pymatgen.core import Composition

    n = len(S.prototypes()[Composition(formula).anonymized_formula])
    return list(range(n)) if n <= MAX_SCREEN else sorted(rng.choice(n, MAX_SCREEN, replace=False).tolist())


def choose_structure(formula: str, rng: np.random.Generator):
    """(atoms, aflow label, screened count) of the lowest-CHGNet-energy plausible prototype."""
    from crysbench.datagen import teachers as T

    placed = []
    for k in _candidates(formula, rng):
        try:
            atoms, label = S.place_formula(formula, k)
        except Exception:  # DLS volume prediction fails for some element combinations
            continue
        if _physical(atoms):
            key = "cgcnn_formation_energy_per_atom"
            ef = T.cgcnn_predict([T.to_structure(atoms)], only=(key,))[0][key]
            placed.append((ef, label, atoms))
    if not placed:
        raise RuntimeError(f"{formula}: no physical placement on any matching prototype")
    placed.sort(key=lambda p: (p[0], p[1]))
    scored = [(T.chgnet_predict([T.to_structure(a)])[0][0], lab, a) for _, lab, a in placed[:MAX_CHGNET]]
    energy, label, atoms = min(scored, key=lambda p: (p[0], p[1]))
    return atoms, label, len(placed)


def _finite_or_none(x: float) -> float | None:
    return round(float(x), 5) if math.isfinite(x) else None  # some entries have a NaN uncertainty


def experimental_record(seed: int, k: int, row: dict) -> dict | None:
    """Record ``k`` of the experimental set, or None when no prototype gives a usable crystal."""
    rng = np.random.default_rng([seed, 3, k])
    try:
        atoms, label, screened = choose_structure(row["formula"], rng)
        targets = {**L.physics_labels(atoms), **teacher_labels(atoms), TARGET: row["enthalpy_per_atom"]}
    except Exception as exc:
        print(f"[experimental] skip {row['formula']}: {type(exc).__name__}: {exc}", flush=True)
        return None
    prov = {"formula": row["formula"], "mp_id": row["mp_id"], "prototype": label,
            "prototypes_screened": screened, "volume": "DLSVolumePredictor",
            "exp_uncertainty_per_atom": _finite_or_none(row["uncertainty_per_atom"])}
    return L.make_record(f"cb-exp-{k:05d}", atoms, targets, L.spacegroup_of(atoms),
                         "exp_formation_enthalpy", prov)


def _run_exp_chunk(job: tuple[str, int, int]) -> tuple[int, int, float]:
    import time

    out, seed, c = job
    rows = usable_compounds()
    path = Path(out) / "experimental" / f"chunk-{c:05d}.jsonl.gz"
    done = path.with_suffix(".done")  # chunks may hold fewer records than compounds (skips)
    if path.exists() and done.exists():
        return c, count_lines(path), float("nan")
    t0 = time.perf_counter()
    lo, hi = c * EXP_CHUNK, min(len(rows), (c + 1) * EXP_CHUNK)
    records = [r for k in range(lo, hi) if (r := experimental_record(seed, k, rows[k])) is not None]
    write_jsonl_gz(path, records)
    done.write_text(f"{hi - lo} compounds, {len(records)} records\n")
    return c, len(records), (time.perf_counter() - t0) / max(1, hi - lo)


def generate_experimental(out: Path, seed: int = 0, workers: int = 1) -> dict:
    """Write ``out/experimental/chunk-*.jsonl.gz`` and add the set to MANIFEST.json."""
    from crysbench.datagen.manifest import sha256, write_manifest
    from crysbench.datagen.teachers import elemental_refs

    elemental_refs()
    n_chunks = math.ceil(len(usable_compounds()) / EXP_CHUNK)
    jobs = [(str(out), seed, c) for c in range(n_chunks)]
    if workers <= 1:
        _init_worker()
        results = [_run_exp_chunk(j) for j in jobs]
    else:
        import multiprocessing as mp

        with mp.get_context("fork").Pool(workers, initializer=_init_worker) as pool:
            results = list(pool.imap(_run_exp_chunk, jobs))
    files = [{"path": f"experimental/chunk-{c:05d}.jsonl.gz", "records": n,
              "sha256": sha256(Path(out) / "experimental" / f"chunk-{c:05d}.jsonl.gz")}
             for c, n, _ in results]
    times = [t for *_, t in results if not math.isnan(t)]
    entry = {"records": sum(f["records"] for f in files), "files": files,
             "compounds_usable": len(usable_compounds()), "source": str(exp_compounds_path().name),
             "seconds_per_compound": round(float(np.mean(times)), 4) if times else None}
    path = Path(out) / "MANIFEST.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    sets = {k: v for k, v in old.get("sets", {}).items() if k not in ("labelled", "untagged")}
    sets["experimental"] = entry
    write_manifest(out, old.get("seed", seed), old.get("timing_seconds_per_record", {}), sets)
    return entry

