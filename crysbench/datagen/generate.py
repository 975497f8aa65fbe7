"""Seeded, chunked, resumable generation of the built-in labelled and untagged sets.

Record ``g`` of a stream depends only on (seed, stream, g): its RNG is ``default_rng([seed, stream,
g])`` and MP (formula, prototype) pairs are taken from one seeded permutation, so any slice of any
chunk regenerates on its own. Every 5th labelled record (g % 5 == 4) is a pyxtal crystal, cycling
over the 7 crystal systems; the others are MP formulas on prototypes. Chunks of ``CHUNK`` records
are written to a temporary name and renamed when complete; a chunk already on disk with the right
record count is skipped, so an interrupted run resumes.
"""

from __future__ import annotations

import gzip
import json
import os
import time
from pathlib import Path

import numpy as np

from crysbench.datagen import labels as L
from crysbench.datagen import structures as S

CHUNK = 500
STREAMS = {"labelled": 1, "untagged": 2}
PYXTAL_EVERY = 5  # 1 in 5 labelled records is a random pyxtal crystal
MIN_DISTANCE_RATIO = 0.6  # reject crystals with d_ij < 0.6 (r_cov_i + r_cov_j)
MAX_ATTEMPTS = 40
_PAIR_STRIDE = 65_536  # attempt t of record g takes pair perm[g + t * stride]


def _pair_permutation(seed: int) -> np.ndarray:
    return np.random.default_rng([seed, 0]).permutation(len(S.formula_prototype_pairs()))


def _physical(atoms) -> bool:
    return L.min_distance_ratio(atoms) >= MIN_DISTANCE_RATIO


def _mp_candidate(g: int, attempt: int, perm: np.ndarray):
    pairs = S.formula_prototype_pairs()
    mp_id, formula, k = pairs[perm[(g + attempt * _PAIR_STRIDE) % len(pairs)]]
    atoms, label = S.place_formula(formula, k)
    return atoms, "mp_formula_on_aflow", {"formula": formula, "mp_id": mp_id, "prototype": label,
                                          "volume": "DLSVolumePredictor"}


def _pyxtal_candidate(rng: np.random.Generator, system: int):
    atoms, sg, species = S.random_pyxtal(rng, system)
    return atoms, "pyxtal", {"formula": atoms.get_chemical_formula(mode="metal"),
                             "requested_spacegroup": sg, "requested_crystal_system": system}


def teacher_labels(atoms) -> dict[str, float]:
    """CHGNet (energy, formation energy, |magmom|) and the 8 CGCNN teachers for one crystal."""
    from crysbench.datagen import teachers as T

    s = T.to_structure(atoms)
    (energy, magmom), = T.chgnet_predict([s])
    out = {"chgnet_energy_per_atom": energy,
           "chgnet_formation_energy_per_atom": T.formation_energy(atoms.get_chemical_symbols(), energy),
           "chgnet_mean_abs_magmom": magmom}
    out.update(T.cgcnn_predict([s])[0])
    return out


def labelled_record(seed: int, g: int, perm: np.ndarray) -> dict:
    """Labelled record ``g`` of the stream: retries with the next candidate on any failure."""
    rng = np.random.default_rng([seed, STREAMS["labelled"], g])
    errors = []
    for attempt in range(MAX_ATTEMPTS):
        try:
            if g % PYXTAL_EVERY == PYXTAL_EVERY - 1:
                atoms, source, prov = _pyxtal_candidate(rng, (g // PYXTAL_EVERY) % 7)
            else:
                atoms, source, prov = _mp_candidate(g, attempt, perm)
            if not _physical(atoms):
                continue
            targets = {**L.physics_labels(atoms), **teacher_labels(atoms)}
            prov["attempt"] = attempt
            return L.make_record(f"cb-lab-{g:06d}", atoms, targets, L.spacegroup_of(atoms), source, prov)
        except Exception as exc:  # a candidate that cannot be built or labelled is replaced
            errors.append(f"{type(exc).__name__}: {exc}")
    raise RuntimeError(f"labelled record {g}: no usable candidate in {MAX_ATTEMPTS} tries; {errors[-3:]}")


def untagged_record(seed: int, g: int) -> dict:
    """Untagged record ``g``: a pyxtal crystal labelled only with spglib symmetry."""
    rng = np.random.default_rng([seed, STREAMS["untagged"], g])
    for attempt in range(MAX_ATTEMPTS):
        atoms, source, prov = _pyxtal_candidate(rng, g % 7)
        if _physical(atoms):
            prov["attempt"] = attempt
            return L.make_record(f"cb-unt-{g:06d}", atoms, {}, L.spacegroup_of(atoms), source, prov)
    raise RuntimeError(f"untagged record {g}: no physical pyxtal crystal in {MAX_ATTEMPTS} tries")


def _progress(record: dict, g: int) -> dict:
    if (g + 1) % 100 == 0:
        print(f"[datagen] record {g + 1} done at {time.strftime('%H:%M:%S')}", flush=True)
    return record


def make_records(stream: str, seed: int, start: int, stop: int) -> list[dict]:
    """Records ``start..stop-1`` of a stream (pure function of its arguments)."""
    if stream == "labelled":
        perm = _pair_permutation(seed)
        return [_progress(labelled_record(seed, g, perm), g) for g in range(start, stop)]
    if stream == "untagged":
        return [untagged_record(seed, g) for g in range(start, stop)]
    raise ValueError(f"unknown stream {stream!r}; expected one of {sorted(STREAMS)}")


def chunk_path(out: Path, stream: str, c: int) -> Path:
    return Path(out) / stream / f"chunk-{c:05d}.jsonl.gz"


def write_jsonl_gz(path: Path, records: list[dict]) -> None:
    """Deterministic gzip (mtime 0) written to a temporary name, then renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    # filename="" and mtime=0 keep the gzip header free of the temporary name and the clock
    with open(tmp, "wb") as raw, gzip.GzipFile("", "wb", 9, raw, mtime=0) as fh:
        for r in records:
            fh.write((json.dumps(r, separators=(",", ":"), ensure_ascii=False) + "\n").encode())
    tmp.replace(path)


def count_lines(path: Path) -> int:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return sum(1 for _ in fh)


def run_chunk(job: tuple[str, str, int, int, int]) -> tuple[int, int, float]:
    """Write one chunk unless present; returns (chunk, records, seconds per record or nan)."""
    out, stream, seed, c, n = job
    path = chunk_path(Path(out), stream, c)
    size = min(CHUNK, n - c * CHUNK)
    if path.exists() and count_lines(path) == size:
        return c, size, float("nan")
    t0 = time.perf_counter()
    records = make_records(stream, seed, c * CHUNK, c * CHUNK + size)
    write_jsonl_gz(path, records)
    return c, size, (time.perf_counter() - t0) / size


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)  # one process per core; threads would fight over the same cores


def generate_stream(out: Path, stream: str, n: int, seed: int, workers: int = 1) -> list[tuple]:
    """All chunks of a stream, ``workers`` processes; returns per-chunk (chunk, count, s/record)."""
    jobs = [(str(out), stream, seed, c, n) for c in range((n + CHUNK - 1) // CHUNK)]
    if stream == "labelled":
        from crysbench.datagen.teachers import elemental_refs

        elemental_refs()  # compute the cached references once, before forking
    if workers <= 1:
        _init_worker()
        results = []
        for job in jobs:
            results.append(run_chunk(job))
            print(f"[datagen] {stream} chunk {results[-1][0]}: {results[-1][1]} records, "
                  f"{results[-1][2]:.3f} s/record", flush=True)
        return results
    import multiprocessing as mp

    with mp.get_context("fork").Pool(workers, initializer=_init_worker) as pool:
        results = []
        for res in pool.imap(run_chunk, jobs):
            results.append(res)
            print(f"[datagen] {stream} chunk {res[0]}: {res[1]} records, {res[2]:.3f} s/record", flush=True)
    return results
