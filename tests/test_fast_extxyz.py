"""The fast extxyz frame parser gives the same records as ASE's reader, or hands the frame to ASE.

Each case is one frame; both paths of ``readers_files`` run on it and must agree on the crystal
(cell, positions, numbers, pbc, id, bit for bit) and on the raw target dict (keys, values, types), or
both must fail. ``used_fast`` says which frames the fast parser is expected to take.
"""

from __future__ import annotations

import numpy as np
import pytest
from fixtures import rock_salt, skewed, structures, triclinic, write_extxyz, wurtzite

from crysbench.data.fast_extxyz import parse_frame
from crysbench.data.readers import read
from crysbench.data.readers_files import _ase_extxyz_record, _extxyz_frames, _extxyz_record
from crysbench.data.validate import BadRecord

LAT = 'Lattice="5.0 0.0 0.0 0.0 5.0 0.0 0.0 0.0 5.0"'
ATOMS = "Na 0.0 0.0 0.0\nCl 2.5 2.5 2.5\n"


def frame(header: str, atoms: str = ATOMS, count: str | None = None) -> str:
    n = count if count is not None else str(atoms.count("\n"))
    return f"{n}\n{header}\n{atoms}"


# (case name, frame text, fast parser expected to take it)
CASES = [
    ("plain", frame(f"{LAT} Properties=species:S:1:pos:R:3 pbc=\"T T T\""), True),
    ("no Properties, no pbc", frame(LAT), True),
    ("pbc T T F", frame(f'{LAT} pbc="T T F"'), True),
    ("pbc single F", frame(f"{LAT} pbc=F"), True),
    ("pbc lower-case words", frame(f'{LAT} pbc="true false TRUE"'), True),
    ("pbc as numbers", frame(f'{LAT} pbc="1 1 0"'), False),
    ("integer lattice", frame('Lattice="5 0 0 0 5 0 0 0 5"'), True),
    ("lattice with commas", frame('Lattice="5,0,0,0,5,0,0,0,5"'), True),
    ("lattice of 6 numbers", frame('Lattice="5 0 0 0 5 0"'), False),
    ("lattice not numbers", frame('Lattice="a b c d e f g h i"'), False),
    ("no lattice", frame('Properties=species:S:1:pos:R:3 pbc="F F F"'), False),
    ("int, float, exp, str, bool info", frame(f"{LAT} n=3 x=-1.5 y=2e-3 note=hello flag=T z=1.0E+2"), True),
    ("nan and inf info", frame(f"{LAT} a=nan b=inf c=-Infinity"), True),
    ("quoted scalar", frame(f'{LAT} gap="0.75" name="two words"'), True),
    ("quoted array", frame(f'{LAT} vec="1 2 3" fvec="1.5 2 3" flags="T F"'), True),
    ("empty quoted value", frame(f'{LAT} empty=""'), True),
    ("comma-separated value", frame(f"{LAT} pair=1,2"), True),
    ("numeric id", frame(f"{LAT} id=42 gap=1.0"), True),
    ("float id", frame(f"{LAT} id=1.50"), True),
    ("bool id", frame(f"{LAT} id=T"), True),
    ("string id", frame(f"{LAT} id=mp-149"), True),
    ("uid kept as text", frame(f"{LAT} uid=123"), True),
    ("energy goes through the calculator", frame(f"{LAT} energy=-3.5 free_energy=-3.4 magmom=0.5"), True),
    ("integer energy", frame(f"{LAT} energy=-3"), True),
    ("string energy", frame(f"{LAT} energy=abc"), True),
    ("key repeated: last wins", frame(f"{LAT} gap=1.0 gap=2.0"), True),
    ("hyphen and digits in key", frame(f"{LAT} e-form=1.0 k2=3"), True),
    ("big integer", frame(f"{LAT} big=123456789012345678901234567890"), True),
    ("underscore number", frame(f"{LAT} u=1_000"), True),
    ("hex-looking text", frame(f"{LAT} h=0x10"), True),
    ("stress 9 numbers", frame(f'{LAT} stress="1 0 0 0 1 0 0 0 1"'), False),
    ("virial", frame(f'{LAT} virial="1 0 0 0 1 0 0 0 1"'), False),
    ("dipole", frame(f'{LAT} dipole="0 0 1"'), False),
    ("bare flag", frame(f"{LAT} converged"), False),
    ("spaces around =", frame(f"{LAT} gap = 1.0"), False),
    ("escaped quote", frame(f'{LAT} s="a\\"b"'), False),
    ("single quotes", frame(f"{LAT} s='a b'"), False),
    ("braces", frame(f"{LAT} s={{1 2}}"), False),
    ("brackets", frame(f"{LAT} s=[1,2]"), False),
    ("JSON value", frame(f'{LAT} j="_JSON {{}}"'), False),
    ("glued quotes", frame(f'{LAT} s="a"b'), False),
    ("lower-case species", frame(LAT, "na 0 0 0\nCL 2.5 2.5 2.5\n"), True),
    ("dummy species X", frame(LAT, "X 0 0 0\nCl 2.5 2.5 2.5\n"), True),
    ("unknown species", frame(LAT, "Qq 0 0 0\nCl 2.5 2.5 2.5\n"), False),
    ("numeric species", frame(LAT, "11 0 0 0\n17 2.5 2.5 2.5\n"), False),
    ("Fortran exponent", frame(LAT, "Na 0 0 0\nCl 2.5d0 2.5 2.5\n"), False),
    ("nan coordinate", frame(LAT, "Na 0 0 0\nCl nan 2.5 2.5\n"), True),
    ("extra columns ignored", frame(f"{LAT} Properties=species:S:1:pos:R:3:forces:R:3:tags:I:1",
                                    "Na 0 0 0 0.1 0.2 0.3 1\nCl 2.5 2.5 2.5 0 0 0 2\n"), True),
    ("bad integer column", frame(f"{LAT} Properties=species:S:1:pos:R:3:tags:I:1",
                                 "Na 0 0 0 1.5\nCl 2.5 2.5 2.5 2\n"), False),
    ("too many values on a line", frame(LAT, "Na 0 0 0 7\nCl 2.5 2.5 2.5\n"), False),
    ("too few values on a line", frame(LAT, "Na 0 0\nCl 2.5 2.5 2.5\n"), False),
    ("Z column", frame(f"{LAT} Properties=Z:I:1:pos:R:3", "11 0 0 0\n17 2.5 2.5 2.5\n"), False),
    ("logical column", frame(f"{LAT} Properties=species:S:1:pos:R:3:fix:L:1", "Na 0 0 0 T\nCl 1 1 1 F\n"),
     False),
    ("count with text", frame(LAT, count="2 atoms"), False),
    ("CRLF line ends", frame(LAT, "Na 0 0 0\r\nCl 2.5 2.5 2.5\r\n").replace(f"{LAT}\n", f"{LAT}\r\n"), True),
    ("form feed inside a line", frame(f"{LAT} note=a\fb"), False),
    ("no trailing newline", frame(LAT)[:-1], True),
]


def _both(text: str):
    """(fast-or-ASE result, ASE-only result); each is (crystal, raw) or the BadRecord reason."""
    out = []
    for fn in (_extxyz_record, _ase_extxyz_record):
        try:
            out.append(fn(text, "7"))
        except BadRecord as exc:
            out.append(exc.reason)
    return out


def _assert_same(case: str, got, want) -> None:
    if isinstance(want, str) or isinstance(got, str):
        assert got == want, f"{case}: fast path gave {got!r}, ASE {want!r}"
        return
    (c1, r1), (c2, r2) = got, want
    assert c1.id == c2.id, f"{case}: id {c1.id!r} != {c2.id!r}"
    assert c1.pbc == c2.pbc, f"{case}: pbc {c1.pbc} != {c2.pbc}"
    for name in ("cell", "positions", "numbers"):
        a, b = getattr(c1, name), getattr(c2, name)
        assert a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True), f"{case}: {name} differ"
    assert set(r1) == set(r2), f"{case}: raw keys {sorted(r1)} != {sorted(r2)}"
    for k in r1:
        same = r1[k] == r2[k] or (r1[k] != r1[k] and r2[k] != r2[k])  # nan == nan
        assert same and type(r1[k]) is type(r2[k]), f"{case}: {k}: {r1[k]!r} != {r2[k]!r}"


@pytest.mark.parametrize("case, text, fast", CASES, ids=[c[0] for c in CASES])
def test_fast_frame_equals_ase(case, text, fast):
    assert (parse_frame(text) is not None) == fast, f"{case}: fast parser taken = {not fast}"
    got, want = _both(text)
    _assert_same(case, got, want)


@pytest.mark.parametrize("seed", range(3))
def test_fixture_files_read_identically(tmp_path, seed):
    """Written by ASE from the test structures (random info values): every frame takes the fast path
    and gives ASE's record."""
    rng = np.random.default_rng(seed)
    items = [(s, {"id": f"c{i}", "energy": float(rng.normal()), "gap": float(rng.uniform()),
                  "n": int(rng.integers(100)), "note": "x y", "ok": bool(rng.integers(2))})
             for i, s in enumerate([*structures(), rock_salt(), wurtzite(), triclinic(), skewed()])]
    path = write_extxyz(tmp_path / "f.extxyz", items)
    frames = list(_extxyz_frames(path))
    for index, text in frames:
        assert parse_frame(text) is not None, f"frame {index} fell back to ASE"
        got, want = _both(text)
        _assert_same(f"frame {index}", got, want)
    assert len(list(read(path, "extxyz"))) == len(items)
