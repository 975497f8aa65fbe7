"""Readers round-trip fixtures of every real format; bad records fail (or are skipped) clearly."""

from __future__ import annotations

import csv
import json
import math
import pickle

import numpy as np
import pytest
from fixtures import (
    assert_same_structure,
    jarvis_atoms,
    jarvis_entry,
    rock_salt,
    skewed,
    structures,
    triclinic,
    write_alignn,
    write_cgcnn,
    write_cif_folder,
    write_extxyz,
    write_id_prop,
    write_jarvis,
    write_matbench,
    wurtzite,
)

from crysbench.data import (
    Crystal,
    RecordError,
    available_formats,
    min_periodic_distance,
    read,
    symmetry_labels,
    write_skip_report,
)
from crysbench.data.symmetry import crystal_system_index

IDS = ["nacl", "zno", "tric", "skew"]


# ---- round trips -----------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".json.gz", ".json"])
def test_matbench_round_trip(tmp_path, suffix):
    items = [(s, {"gap pbe": 0.5 * i, "e_form": -1.0 - i}) for i, s in enumerate(structures())]
    items[2][1]["e_form"] = math.nan  # pandas NaN -> null in the file
    path = write_matbench(tmp_path / f"mb{suffix}", items, ["gap pbe", "e_form"], index=IDS)
    got = list(read(path, "matbench"))
    assert [c.id for c in got] == IDS
    for c, (s, t) in zip(got, items, strict=True):
        assert_same_structure(c, s, tol=1e-9)
        np.testing.assert_allclose(c.positions, s.cart_coords, atol=1e-9)  # no wrapping applied
        assert c.targets == {k: v for k, v in t.items() if not math.isnan(v)}
        assert c.provenance.format == "matbench" and c.provenance.source == str(path)
    only_gap = list(read(path, "matbench", targets=["gap pbe"]))
    assert [c.targets for c in only_gap] == [{"gap pbe": 0.5 * i} for i in range(4)]


def test_jarvis_round_trip_fractional_and_cartesian(tmp_path):
    entries = [jarvis_entry(f"JVASP-{i}", jarvis_atoms(s, cartesian=i % 2 == 1),
                            formation_energy_peratom=-0.1 * i, optb88vdw_bandgap=1.0 + i,
                            bulk_modulus_kv="na" if i == 3 else 100.0 + i, elastic_tensor=[[1, 2], [3, 4]])
               for i, s in enumerate(structures())]
    path = write_jarvis(tmp_path / "dft_3d.json", entries)
    got = list(read(path, "jarvis", targets=["formation_energy_peratom", "optb88vdw_bandgap"]))
    assert [c.id for c in got] == [f"JVASP-{i}" for i in range(4)]
    for i, (c, s) in enumerate(zip(got, structures(), strict=True)):
        assert_same_structure(c, s, tol=1e-9)
        assert c.targets == {"formation_energy_peratom": -0.1 * i, "optb88vdw_bandgap": 1.0 + i}
    everything = list(read(path, "jarvis"))  # targets=None: every finite number, "na" absent
    assert set(everything[0].targets) == {"formation_energy_peratom", "optb88vdw_bandgap", "bulk_modulus_kv"}
    assert "bulk_modulus_kv" not in everything[3].targets
    sparse = list(read(path, "jarvis", targets=["bulk_modulus_kv"], require_targets=False))
    assert [c.targets for c in sparse] == [{"bulk_modulus_kv": 100.0 + i} for i in range(3)] + [{}]


def test_cgcnn_round_trip_names_columns(tmp_path):
    items = [(key, s, [0.1 * i, 2.0 * i]) for i, (key, s) in enumerate(zip(IDS, structures(), strict=True))]
    folder = write_cgcnn(tmp_path / "cgcnn", items)
    got = list(read(folder, "cgcnn", targets=["band_gap", "log_k"]))
    assert [c.id for c in got] == IDS
    for c, (_, s, values) in zip(got, items, strict=True):
        assert_same_structure(c, s, same_orientation=False)  # CIF keeps lengths and angles only
        assert c.targets == pytest.approx({"band_gap": values[0], "log_k": values[1]})
    default_names = next(iter(read(folder, "cgcnn")))
    assert set(default_names.targets) == {"target_0", "target_1"}


def test_alignn_round_trip_poscar(tmp_path):
    items = [(f"JVASP-{i}", s, 0.25 * i) for i, s in enumerate(structures())]
    folder = write_alignn(tmp_path / "alignn", items)
    got = list(read(folder, "alignn"))
    assert [c.id for c in got] == [f"POSCAR-JVASP-{i}.vasp" for i in range(4)]
    for c, (_, s, value) in zip(got, items, strict=True):
        assert_same_structure(c, s, tol=1e-6)
        assert c.targets == pytest.approx({"target": value})


def test_cif_folder_natural_order_and_no_labels(tmp_path):
    items = [rock_salt(a=5.0 + 0.1 * i) for i in range(12)]
    folder = write_cif_folder(tmp_path / "untagged", items)
    got = list(read(folder, "cif_folder"))
    assert [c.id for c in got] == [str(i) for i in range(12)]  # 2 before 10
    for c, s in zip(got, items, strict=True):
        assert_same_structure(c, s, same_orientation=False)
        assert c.targets == {}
    with pytest.raises(ValueError, match="no labels"):
        list(read(folder, "cif_folder", targets=["x"]))


def test_extxyz_round_trip_info_and_energy(tmp_path):
    items = [(s, {"id": key, "energy": -3.0 * i, "band_gap": 0.5 + i, "note": "x"})
             for i, (key, s) in enumerate(zip(IDS, structures(), strict=True))]
    path = write_extxyz(tmp_path / "frames.extxyz", items)
    got = list(read(path, "extxyz"))
    assert [c.id for c in got] == IDS
    for i, (c, (s, _)) in enumerate(zip(got, items, strict=True)):
        assert_same_structure(c, s, tol=1e-6)
        assert c.targets == pytest.approx({"energy": -3.0 * i, "band_gap": 0.5 + i})
        assert c.pbc == (True, True, True)


def test_memory_structures_atoms_and_pairs():
    from pymatgen.io.ase import AseAtomsAdaptor

    s0, s1, s2 = rock_salt(), wurtzite(), triclinic()
    atoms = AseAtomsAdaptor.get_atoms(s1)
    atoms.info = {"id": "zno", "gap": 3.3}
    got = list(read([s0, atoms, (s2, {"gap": 1.0, "ef": math.nan})], "memory", targets=["gap"],
                    require_targets=False))
    assert [c.id for c in got] == ["0", "zno", "2"]
    assert [c.targets for c in got] == [{}, {"gap": 3.3}, {"gap": 1.0}]
    for c, s in zip(got, [s0, s1, s2], strict=True):
        assert_same_structure(c, s, tol=1e-9)


def test_crystal_conversions_round_trip():
    s = skewed()
    c = Crystal.from_pymatgen(s, id="skew", targets={"y": 1.5})
    assert c.cell.dtype == np.float64 and c.numbers.dtype == np.int64 and not c.positions.flags.writeable
    back = Crystal.from_pymatgen(c.to_pymatgen(), id="skew")
    np.testing.assert_allclose(back.positions, c.positions, atol=1e-12)
    a = c.to_ase()
    assert a.info["y"] == 1.5
    via_ase = Crystal.from_ase(a, id="skew")
    np.testing.assert_allclose(via_ase.cell, c.cell)
    np.testing.assert_allclose(via_ase.positions, c.positions)
    np.testing.assert_array_equal(via_ase.numbers, c.numbers)
    thawed = pickle.loads(pickle.dumps(c))  # records travel to ingest worker processes
    assert thawed.id == "skew" and thawed.targets == {"y": 1.5} and thawed.provenance == c.provenance
    np.testing.assert_array_equal(thawed.positions, c.positions)
    with pytest.raises(ValueError, match="shape"):
        Crystal(id="x", cell=np.eye(2), positions=np.zeros((1, 3)), numbers=[1])
    with pytest.raises(ValueError, match="2 atomic numbers for 1 positions"):
        Crystal(id="x", cell=np.eye(3), positions=np.zeros((1, 3)), numbers=[1, 2])


def test_disordered_structure_is_rejected():
    from pymatgen.core import Lattice, Structure

    s = Structure(Lattice.cubic(4.0), [{"Fe": 0.5, "Co": 0.5}], [[0, 0, 0]])
    with pytest.raises(RecordError, match="disordered"):
        list(read([s], "memory"))


# ---- bad records -----------------------------------------------------------------------------
def _jarvis_with(tmp_path, bad_atoms=None, **props):
    good = jarvis_entry("JVASP-1", jarvis_atoms(rock_salt()), formation_energy_peratom=-1.0,
                        optb88vdw_bandgap=0.5)
    bad = jarvis_entry("JVASP-BAD", bad_atoms or jarvis_atoms(rock_salt()),
                       **{"formation_energy_peratom": -2.0, **props})
    return write_jarvis(tmp_path / "dft_3d.json", [good, bad, good | {"jid": "JVASP-3"}])


def _atoms(lattice, coords, elements, cartesian=False):
    return {"lattice_mat": lattice, "coords": coords, "elements": elements, "cartesian": cartesian}


CUBE = [[5.0, 0, 0], [0, 5.0, 0], [0, 0, 5.0]]
BAD_STRUCTURES = {
    "unknown_symbol": (_atoms(CUBE, [[0, 0, 0]], ["Xx"]), "unknown element symbol 'Xx'"),
    "zero_volume": (_atoms([[5.0, 0, 0], [0, 5.0, 0], [0, 0, 0]], [[0, 0, 0]], ["Si"]),
                    "zero-volume or singular cell"),
    "singular": (_atoms([[5.0, 0, 0], [0, 5.0, 0], [5.0, 5.0, 0]], [[0, 0, 0]], ["Si"]),
                 "zero-volume or singular cell"),
    "overlap": (_atoms(CUBE, [[0, 0, 0], [0.3, 0, 0]], ["Si", "Si"], cartesian=True),
                "overlapping atoms: minimum periodic distance 0.300"),
    "overlap_across_boundary": (_atoms(CUBE, [[0.01, 0.5, 0.5], [0.99, 0.5, 0.5]], ["Si", "O"]),
                                "overlapping atoms: minimum periodic distance 0.100"),
    "overlap_own_image": (_atoms([[0.4, 0, 0], [0, 5.0, 0], [0, 0, 5.0]], [[0, 0, 0]], ["H"]),
                          "overlapping atoms: minimum periodic distance 0.400"),
    "empty": (_atoms(CUBE, [], []), "empty structure"),
    "nan_coordinates": (_atoms(CUBE, [[0, 0, 0], [math.nan, 0.5, 0.5]], ["Si", "O"]),
                        "non-finite coordinates"),
    "inf_lattice": (_atoms([[math.inf, 0, 0], [0, 5.0, 0], [0, 0, 5.0]], [[0, 0, 0]], ["Si"]),
                    "non-finite lattice"),
    "malformed": ({"lattice_mat": CUBE, "coords": [[0, 0]], "elements": ["Si"]}, "malformed 'atoms'"),
}


@pytest.mark.parametrize("case", sorted(BAD_STRUCTURES))
def test_bad_structure_fails_naming_file_record_reason(tmp_path, case):
    atoms, reason = BAD_STRUCTURES[case]
    path = _jarvis_with(tmp_path, bad_atoms=atoms)
    with pytest.raises(RecordError) as info:
        list(read(path, "jarvis"))
    msg = str(info.value)
    assert str(path) in msg and "record 1" in msg and "JVASP-BAD" in msg and reason in msg, msg
    assert info.value.source == str(path) and reason in info.value.reason


@pytest.mark.parametrize("value, reason", [("na", "missing ('na')"), (math.nan, "not finite (nan)"),
                                           (math.inf, "not finite (inf)"), ("metal", "not a number"),
                                           (None, "missing (null)")])
def test_bad_required_target(tmp_path, value, reason):
    path = _jarvis_with(tmp_path, optb88vdw_bandgap=value)
    targets = ["formation_energy_peratom", "optb88vdw_bandgap"]
    with pytest.raises(RecordError, match=r"JVASP-BAD.*target 'optb88vdw_bandgap' is " + reason[:7]) as info:
        list(read(path, "jarvis", targets=targets, require_targets=True))
    assert reason in str(info.value) and str(path) in str(info.value)
    lenient = list(read(path, "jarvis", targets=targets, require_targets=False))
    assert [sorted(c.targets) for c in lenient] == [targets, ["formation_energy_peratom"], targets]


def test_target_field_absent_is_missing(tmp_path):
    path = write_jarvis(tmp_path / "one.json", [jarvis_entry("JVASP-X", jarvis_atoms(rock_salt()))])
    with pytest.raises(RecordError, match=r"JVASP-X.*target 'ehull' is missing \(no such field\)"):
        list(read(path, "jarvis", targets=["ehull"]))


def test_unknown_atomic_number_in_memory():
    c = Crystal(id="z0", cell=np.eye(3) * 4, positions=[[0, 0, 0]], numbers=[119])
    with pytest.raises(RecordError, match="<memory>: record 0.*atomic number 119 is outside 1..118"):
        list(read([c], "memory"))


def test_cgcnn_bad_cif_missing_file_and_bad_targets(tmp_path):
    items = [("good", rock_salt(), [1.0]), ("garbage", rock_salt(), [2.0]), ("xx", rock_salt(), [3.0])]
    folder = write_cgcnn(tmp_path / "cg", items)
    (folder / "garbage.cif").write_text("data_broken\n_cell_length_a 4\nnot a cif\n")
    cif = (folder / "xx.cif").read_text()
    (folder / "xx.cif").write_text(cif.replace(" Na ", " Xx ").replace("Na", "Xx"))
    with open(folder / "id_prop.csv", "a") as fh:
        fh.write("absent,4.0\nnanrow,nan\ninfrow,inf\n")
    for key in ("nanrow", "infrow"):
        (folder / f"{key}.cif").write_text(cif)
    reading = read(folder, "cgcnn", targets=["y"], on_error="skip")
    assert [c.id for c in reading] == ["good"]
    reasons = {s.record: s.reason for s in reading.skipped}
    assert all(s.source == str(folder / "id_prop.csv") for s in reading.skipped)
    assert "unparsable CIF garbage.cif" in reasons["record 1 (id 'garbage')"]
    assert "unknown element 'Xx" in reasons["record 2 (id 'xx')"]
    assert reasons["record 3 (id 'absent')"] == "missing file absent.cif"
    assert reasons["record 4 (id 'nanrow')"] == "target 'y' is not finite (nan)"
    assert reasons["record 5 (id 'infrow')"] == "target 'y' is not finite (inf)"
    with pytest.raises(RecordError, match=r"id_prop.csv: record 1 \(id 'garbage'\): unparsable CIF"):
        list(read(folder, "cgcnn", targets=["y"]))


def test_alignn_unparsable_poscar(tmp_path):
    folder = write_alignn(tmp_path / "al", [("1", rock_salt(), 0.0), ("2", wurtzite(), 1.0)])
    (folder / "POSCAR-2.vasp").write_text("comment\nnot-a-scale\n")
    with pytest.raises(RecordError, match=r"record 1 \(id 'POSCAR-2.vasp'\): unparsable POSCAR"):
        list(read(folder, "alignn"))


def test_matbench_bad_structure_dict_and_null_target(tmp_path):
    items = [(rock_salt(), {"e": 1.0}), (wurtzite(), {"e": math.nan}), (triclinic(), {"e": 3.0})]
    path = write_matbench(tmp_path / "mb.json.gz", items, ["e"], index=["a", "b", "c"])
    with pytest.raises(RecordError, match=r"mb.json.gz: record 1 \(id 'b'\): target 'e' is missing \(null\)"):
        list(read(path, "matbench", targets=["e"]))
    doc = {"index": ["a"], "columns": ["structure", "e"], "data": [[{"lattice": "nope"}, 1.0]]}
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    with pytest.raises(RecordError, match="record 0 \\(id 'a'\\): unparsable structure"):
        list(read(bad, "matbench"))
    with pytest.raises(ValueError, match="not columns"):
        read(path, "matbench", targets=["gap"]).__iter__().__next__()


def test_extxyz_bad_frames(tmp_path):
    path = write_extxyz(tmp_path / "f.extxyz", [(rock_salt(), {"id": "a"}), (wurtzite(), {"id": "b"})])
    lines = path.read_text().splitlines(keepends=True)
    second = 2 + len(rock_salt())
    lines[second + 2] = lines[second + 2].replace(lines[second + 2].split()[1], "nan", 1)
    path.write_text("".join(lines) + "2\nLattice=\"4 0 0 0 4 0 0 0 4\"\nSi 0 0 0\n")  # truncated
    reading = read(path, "extxyz", on_error="skip")
    assert [c.id for c in reading] == ["a"]
    reasons = [s.reason.split(":")[0] for s in reading.skipped]
    assert reasons == ["non-finite coordinates (NaN or inf in positions)", "truncated frame"]
    assert reading.skipped[0].record == "record 1 (id 'b')"


# ---- skip mode and report --------------------------------------------------------------------
def test_skip_mode_yields_good_and_reports_bad(tmp_path):
    cube = _atoms(CUBE, [[0, 0, 0], [0.1, 0, 0]], ["Si", "Si"], cartesian=True)
    entries = [jarvis_entry("J1", jarvis_atoms(rock_salt()), gap=1.0),
               jarvis_entry("J2", cube, gap=2.0),
               jarvis_entry("J3", jarvis_atoms(wurtzite()), gap="na"),
               jarvis_entry("J4", jarvis_atoms(triclinic()), gap=4.0)]
    path = write_jarvis(tmp_path / "d.json", entries)
    reading = read(path, "jarvis", targets=["gap"], on_error="skip")
    assert [c.id for c in reading] == ["J1", "J4"]
    assert [(s.record, s.reason.split(":")[0]) for s in reading.skipped] == [
        ("record 1 (id 'J2')", "overlapping atoms"), ("record 2 (id 'J3')", "target 'gap' is missing ('na')")]
    report = write_skip_report(tmp_path / "out" / "skipped.csv", reading.skipped)
    with open(report, newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["source", "record", "reason"]
    assert rows[1][:2] == [str(path), "record 1 (id 'J2')"] and len(rows) == 3
    assert sorted(p.name for p in report.parent.iterdir()) == ["skipped.csv"]  # no temp file left
    assert len(list(reading)) == 2 and len(reading.skipped) == 2  # re-iteration resets the list


def test_format_level_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown format 'xyz'.*matbench"):
        read(tmp_path, "xyz")
    with pytest.raises(FileNotFoundError, match="jarvis source not found"):
        read(tmp_path / "missing.json", "jarvis")
    with pytest.raises(NotADirectoryError):
        read(write_jarvis(tmp_path / "j.json", []), "cgcnn")
    with pytest.raises(FileNotFoundError, match="no id_prop.csv"):
        list(read(tmp_path, "cgcnn"))
    (tmp_path / "list.json").write_text("{}")
    with pytest.raises(ValueError, match="JSON list"):
        list(read(tmp_path / "list.json", "jarvis"))
    with pytest.raises(ValueError, match="on_error"):
        read(tmp_path / "list.json", "jarvis", on_error="ignore")
    formats = {"matbench", "jarvis", "cgcnn", "alignn", "cif_folder", "extxyz", "memory"}
    assert formats <= set(available_formats())


def test_id_prop_blank_lines_ignored(tmp_path):
    folder = write_cgcnn(tmp_path / "cg", [("a", rock_salt(), [1.0])])
    write_id_prop(folder, [("a", 1.0), (), ("a", 2.0)])
    assert [c.targets["target"] for c in read(folder, "cgcnn")] == [1.0, 2.0]


# ---- geometry and symmetry -------------------------------------------------------------------
def test_min_periodic_distance_matches_pymatgen():
    rng = np.random.default_rng(0)
    from pymatgen.core import Lattice, Structure

    for _ in range(5):
        lattice = Lattice.from_parameters(*rng.uniform(3, 6, 3), *rng.uniform(70, 110, 3))
        s = Structure(lattice, ["Si"] * 6, rng.uniform(0, 1, (6, 3)))
        want = min(s.distance_matrix[np.triu_indices(6, 1)].min(), min(lattice.abc))
        got = min_periodic_distance(Crystal.from_pymatgen(s), cutoff=20.0)
        assert got == pytest.approx(want, abs=1e-9)
    far = Crystal.from_pymatgen(rock_salt())
    assert min_periodic_distance(far, cutoff=0.5) == math.inf


@pytest.mark.parametrize("make, number, system", [(rock_salt, 225, 6), (wurtzite, 186, 5)])
def test_symmetry_labels_known(make, number, system):
    assert symmetry_labels(Crystal.from_pymatgen(make())) == (number, system)


def test_symmetry_labels_triclinic_and_system_boundaries():
    number, system = symmetry_labels(Crystal.from_pymatgen(triclinic()))
    assert number in (1, 2) and system == 0
    edges = {1: 0, 2: 0, 3: 1, 15: 1, 16: 2, 74: 2, 75: 3, 142: 3, 143: 4, 167: 4, 168: 5, 194: 5,
             195: 6, 230: 6}
    assert {sg: crystal_system_index(sg) for sg in edges} == edges
    with pytest.raises(ValueError):
        crystal_system_index(231)
