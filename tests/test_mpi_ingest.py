"""`mpiexec -n 2 python -m crysbench ingest` writes the same store content as one process.

Content equality is what the manifest records: every shard's sha256 (shard bytes are deterministic,
see crysbench.store.shard), its counts, and the merged target statistics; the arrays read back are
compared too, so a failure says which dataset differs. Needs Open MPI / MPICH and mpi4py; skipped
with the reason when either is missing, unless CRYSBENCH_REQUIRE_MPI=1 (CI), where that fails.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from crysbench.store import open_store

ROOT = Path(__file__).resolve().parents[1]
N_CRYSTALS, SHARD_SIZE = 40, 6  # 7 shards: rank 0 writes 4, rank 1 writes 3 (the last one short)
REQUIRE = os.environ.get("CRYSBENCH_REQUIRE_MPI") == "1"


def _mpi_missing() -> str | None:
    """Why an MPI ingest cannot run here, or None."""
    if shutil.which("mpiexec") is None:
        return "mpiexec not on PATH (apt-get install openmpi-bin libopenmpi-dev)"
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return "mpi4py is not installed (pip install -r requirements-dev.txt)"
    return None


@pytest.fixture(scope="module")
def mpi_ready():
    reason = _mpi_missing()
    if reason and REQUIRE:
        pytest.fail(f"CRYSBENCH_REQUIRE_MPI=1 but {reason}")
    if reason:
        pytest.skip(reason)


def _mpiexec(n: int) -> list[str]:
    """mpiexec for n local ranks; Open MPI refuses root and > cores without these flags."""
    out = subprocess.run(["mpiexec", "--version"], capture_output=True, text=True)
    openmpi = "Open MPI" in out.stdout + out.stderr or "OpenRTE" in out.stdout + out.stderr
    flags = ["--oversubscribe"] + (["--allow-run-as-root"] if os.geteuid() == 0 else []) if openmpi else []
    return ["mpiexec", "-n", str(n), *flags]


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """The first N_CRYSTALS built-in labelled records as one extxyz file (targets as info keys)."""
    from ase import Atoms
    from ase.io import write

    from crysbench.builtin import records

    frames = []
    for r in itertools.islice(records("labelled"), N_CRYSTALS):
        atoms = Atoms(numbers=r.numbers, positions=r.positions, cell=r.cell, pbc=r.pbc)
        atoms.info = {"id": r.id, **r.targets}
        frames.append(atoms)
    path = tmp_path_factory.mktemp("src") / "crystals.extxyz"
    write(path, frames, format="extxyz")
    return path


def _ingest(source: Path, out: Path, launcher: list[str], *extra: str, ok: bool = True,
            timeout: float = 180) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    cmd = [*launcher, sys.executable, "-m", "crysbench", "ingest", str(source), "--format", "extxyz",
           "--out", str(out), "--shard-size", str(SHARD_SIZE), "--cutoff", "8", "--max-neighbors", "12",
           *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if ok:
        assert proc.returncode == 0, f"{' '.join(cmd)} exit {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def _block_shard(out: Path, index: int) -> None:
    """Make one shard unwritable (a folder where its temporary file goes): only its rank fails."""
    (out / f"shard-{index:05d}.h5.tmp").mkdir(parents=True)


def _content(store: Path) -> dict:
    """The manifest minus what names the run (creation time, version) rather than the content."""
    m = json.loads((store / "manifest.json").read_text())
    return {k: v for k, v in m.items() if k not in ("created", "crysbench_version")}


@pytest.fixture(scope="module")
def stores(mpi_ready, source, tmp_path_factory):
    base = tmp_path_factory.mktemp("stores")
    one = _ingest(source, base / "one", [])
    two = _ingest(source, base / "two", _mpiexec(2))
    return base / "one", base / "two", one, two


def test_two_ranks_write_their_own_shards_and_one_manifest(stores):
    _, two, _, proc = stores
    # only rank 0 prints the summary: a second line would mean both ranks ran as world size 1
    assert proc.stdout.count("wrote ") == 1, proc.stdout
    assert f"wrote {N_CRYSTALS} crystals in 7 shards" in proc.stdout
    assert sorted(p.name for p in two.glob("shard-*.h5")) == [f"shard-{i:05d}.h5" for i in range(7)]
    assert not list(two.glob("*.tmp")), "temporary files left behind"


def test_mpi_store_content_equals_one_process(stores):
    one, two, _, _ = stores
    a, b = _content(one), _content(two)
    assert [s["sha256"] for s in a["shards"]] == [s["sha256"] for s in b["shards"]]
    assert a == b
    sa, sb = open_store(one), open_store(two)  # verify=True re-hashes every shard
    assert len(sa) == len(sb) == N_CRYSTALS
    for shard in range(len(sa.shard_files)):
        x, y = sa.read_shard(shard), sb.read_shard(shard)
        assert sorted(x) == sorted(y)
        for key in x:
            same = x[key] == y[key] if key == "ids" else np.array_equal(x[key], y[key])
            assert same, f"shard {shard}: dataset {key!r} differs between 1 process and 2 MPI ranks"


def test_resumed_mpi_ingest_rewrites_only_missing_shards(stores, source, tmp_path):
    one, two, _, _ = stores
    out = tmp_path / "resume"
    shutil.copytree(two, out)
    (out / "manifest.json").unlink()
    for i in (2, 5):  # one shard of each rank lost: each rank must redo exactly its own
        (out / f"shard-{i:05d}.h5").unlink()
    kept = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.h5")}
    _ingest(source, out, _mpiexec(2))
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.h5") if p.name in kept} == kept
    assert _content(out) == _content(one)


def test_failing_rank_stops_every_rank(mpi_ready, source, tmp_path):
    """Rank 1 fails on its shard 5: rank 0 must not wait forever in the barrier, nor publish."""
    out = tmp_path / "fail"
    _block_shard(out, 5)
    proc = _ingest(source, out, _mpiexec(2), ok=False, timeout=120)
    assert proc.returncode != 0
    assert "MPI rank(s) [1] failed" in proc.stderr and "IsADirectoryError" in proc.stderr
    assert not (out / "manifest.json").exists()


def test_failing_worker_stops_every_worker(source, tmp_path):
    """The same without MPI (--workers 2, multiprocessing): the barrier is aborted, not waited on."""
    out = tmp_path / "fail"
    _block_shard(out, 5)
    proc = _ingest(source, out, [], "--workers", "2", ok=False, timeout=120)
    assert proc.returncode != 0 and "worker ranks [0, 1] failed" in proc.stderr
    assert "BrokenBarrierError" in proc.stderr and not (out / "manifest.json").exists()
