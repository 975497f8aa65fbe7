"""Parity of the native triplets (line graph) kernel with the pure-torch reference.

Cases × dtypes: integers must match exactly, cosines within a per-dtype tolerance; plus input
errors, torch.library.opcheck and thread-count independence.
"""

from __future__ import annotations

import pytest
import torch

import crysbench.ops as ops
from crysbench.ops import reference
from crysbench.synthetic import fcc_supercell, random_batch

try:
    ops.build_info()
except ops.NativeBuildError as exc:  # pragma: no cover - depends on the build
    pytest.skip(f"native extension not built: {exc}", allow_module_level=True)

DTYPES = (torch.float32, torch.float64)
# float32 cosines are accumulated in double natively but in float32 by the reference.
TOL = {torch.float32: 2e-6, torch.float64: 1e-12}


def native_triplets(edge_i, vectors, num_atoms):
    ops._lib()  # loads the extension and registers the fake kernels
    return torch.ops.crysbench.triplets(edge_i, vectors, num_atoms)


def edges_from_degrees(degrees: list[int], seed: int = 0, dtype=torch.float64):
    """A sorted edge_i with the given degree per centre and random bond vectors (Å)."""
    gen = torch.Generator().manual_seed(seed)
    edge_i = torch.repeat_interleave(torch.arange(len(degrees)), torch.tensor(degrees, dtype=torch.long))
    vectors = (torch.rand(edge_i.numel(), 3, generator=gen, dtype=torch.float64) * 6 - 3).to(dtype)
    return edge_i, vectors, len(degrees)


def neighbor_graph(positions, cells, pbc, ptr, cutoff: float, dtype):
    """Reference neighbour list (sorted by edge_i) of a batch, vectors cast to ``dtype``."""
    edge_i, _, _, _, vectors = reference.neighbor_list(positions, cells, pbc, ptr, cutoff)
    return edge_i, vectors.to(dtype), positions.shape[0]


def collinear_case(dtype):
    """Parallel, antiparallel and perpendicular bonds of very different lengths (cos = ±1, 0)."""
    vectors = torch.tensor([[1.0, 0, 0], [2.5, 0, 0], [-3.0, 0, 0], [0, 1e-3, 0], [0, 0, 7.0],
                            [0.5, 0.5, 0.5], [-50.0, -50.0, -50.0]], dtype=dtype)
    return torch.tensor([0, 0, 0, 0, 0, 1, 1]), vectors, 2


def fcc_case(dtype):
    """Unjittered fcc: 12 nearest neighbours in exactly antiparallel and 60°/90°/120° pairs."""
    positions, cells, pbc, ptr = fcc_supercell(2, jitter=0.0)
    return neighbor_graph(positions, cells, pbc, ptr, 2.6, dtype)


def random_crystals_case(seed: int):
    def make(dtype):
        batch = random_batch(6, atoms=(1, 10), seed=seed)  # includes one-atom crystals
        return neighbor_graph(*batch, 4.5, dtype)

    return make


CASES = {
    "empty_edges": lambda dt: (torch.zeros(0, dtype=torch.long), torch.zeros(0, 3, dtype=dt), 4),
    "no_atoms": lambda dt: (torch.zeros(0, dtype=torch.long), torch.zeros(0, 3, dtype=dt), 0),
    "degrees_0_1_2_many": lambda dt: edges_from_degrees([0, 1, 2, 9, 0, 3, 0], dtype=dt),
    "no_pairs_anywhere": lambda dt: edges_from_degrees([1, 0, 1, 1, 0], dtype=dt),
    "one_centre_many_edges": lambda dt: edges_from_degrees([40], seed=3, dtype=dt),
    "collinear_antiparallel": collinear_case,
    "fcc_exact_angles": fcc_case,
    "random_crystals_seed0": random_crystals_case(0),
    "random_crystals_seed1": random_crystals_case(1),
}


def assert_parity(case: str, got, want, dtype) -> None:
    for name, g, w in zip(("edge_a", "edge_b"), got[:2], want[:2], strict=True):
        assert g.dtype == torch.long, f"{case}: {name} dtype {g.dtype}, expected int64"
        assert torch.equal(g, w), f"{case}: {name} differs from the reference ({g.numel()} vs {w.numel()})"
    cos, ref = got[2], want[2]
    assert cos.dtype == dtype, f"{case}: cos dtype {cos.dtype}, expected {dtype}"
    assert cos.shape == ref.shape, f"{case}: cos shape {tuple(cos.shape)} vs {tuple(ref.shape)}"
    diff = (cos - ref).abs().max().item() if cos.numel() else 0.0
    assert diff <= TOL[dtype], f"{case} [{dtype}]: max |cos - ref| = {diff:.3g} > tol {TOL[dtype]:.1g}"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", sorted(CASES))
def test_parity_with_reference(case: str, dtype) -> None:
    edge_i, vectors, num_atoms = CASES[case](dtype)
    got = native_triplets(edge_i, vectors, num_atoms)
    assert_parity(case, got, reference.triplets(edge_i, vectors, num_atoms), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_collinear_cosines_are_exactly_signed_one(dtype) -> None:
    edge_i, vectors, num_atoms = collinear_case(dtype)
    edge_a, edge_b, cos = native_triplets(edge_i, vectors, num_atoms)
    expected = {(0, 1): 1.0, (0, 2): -1.0, (1, 2): -1.0, (0, 3): 0.0, (5, 6): -1.0, (3, 4): 0.0}
    pairs = {(int(a), int(b)): float(c) for a, b, c in zip(edge_a, edge_b, cos, strict=True)}
    for (a, b), want in expected.items():
        for key in ((a, b), (b, a)):
            assert abs(pairs[key] - want) <= TOL[dtype], f"cos{key} = {pairs[key]!r}, expected {want}"
    assert bool((cos.abs() <= 1).all()), f"cos outside [-1, 1]: {cos[cos.abs() > 1]}"


def test_triplet_structure() -> None:
    """Every triplet joins two distinct edges of one centre, in (centre, a, b) order, each once."""
    edge_i, vectors, num_atoms = random_crystals_case(2)(torch.float64)
    edge_a, edge_b, _ = native_triplets(edge_i, vectors, num_atoms)
    deg = torch.bincount(edge_i, minlength=num_atoms)
    assert edge_a.numel() == int((deg * (deg - 1)).sum())
    assert torch.equal(edge_i[edge_a], edge_i[edge_b]) and bool((edge_a != edge_b).all())
    key = edge_a * edge_i.numel() + edge_b
    assert bool((key.diff() > 0).all()), "triplets not strictly ordered by (a, b)"


def test_facade_matches_reference_backend(monkeypatch) -> None:
    edge_i, vectors, num_atoms = random_crystals_case(3)(torch.float64)
    native = ops.triplets(edge_i, vectors, num_atoms)
    monkeypatch.setenv("CRYSBENCH_OPS", "ref")
    assert_parity("facade", native, ops.triplets(edge_i, vectors, num_atoms), torch.float64)


def test_non_contiguous_vectors() -> None:
    edge_i, vectors, num_atoms = edges_from_degrees([3, 0, 5, 2], seed=4)
    strided = torch.cat([vectors, vectors], dim=1)[:, ::2]  # same values, stride 2
    assert not strided.is_contiguous()
    assert_parity("strided", native_triplets(edge_i, strided, num_atoms),
                  reference.triplets(edge_i, vectors, num_atoms), torch.float64)


def test_one_and_two_threads_identical() -> None:
    degrees = torch.randint(0, 16, (3000,), generator=torch.Generator().manual_seed(5)).tolist()
    edge_i, vectors, num_atoms = edges_from_degrees(degrees, seed=5, dtype=torch.float32)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = native_triplets(edge_i, vectors, num_atoms)
        torch.set_num_threads(2)
        two = native_triplets(edge_i, vectors, num_atoms)
    finally:
        torch.set_num_threads(before)
    for name, x, y in zip(("edge_a", "edge_b", "cos"), one, two, strict=True):
        assert torch.equal(x, y), f"{name} differs between 1 and 2 threads"


ERRORS = {
    "unsorted_edge_i": (lambda: (torch.tensor([0, 2, 1]), torch.ones(3, 3), 3), "sorted"),
    "edge_i_out_of_range": (lambda: (torch.tensor([0, 1, 5]), torch.ones(3, 3), 3), "outside"),
    "negative_edge_i": (lambda: (torch.tensor([-1, 0, 1]), torch.ones(3, 3), 3), "outside"),
    "vectors_wrong_rows": (lambda: (torch.tensor([0, 0, 1]), torch.ones(2, 3), 2), "shape"),
    "vectors_wrong_cols": (lambda: (torch.tensor([0, 0, 1]), torch.ones(3, 2), 2), "shape"),
    "edge_i_2d": (lambda: (torch.zeros(3, 1, dtype=torch.long), torch.ones(3, 3), 2), "dimensions"),
    "edge_i_int32": (lambda: (torch.tensor([0, 0, 1], dtype=torch.int32), torch.ones(3, 3), 2), "int64"),
    "vectors_half": (lambda: (torch.tensor([0, 0, 1]), torch.ones(3, 3, dtype=torch.half), 2), "float32"),
    "vectors_int": (lambda: (torch.tensor([0, 0, 1]), torch.ones(3, 3, dtype=torch.long), 2), "float32"),
    "negative_num_atoms": (lambda: (torch.tensor([], dtype=torch.long), torch.ones(0, 3), -1), "num_atoms"),
}


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_native_rejects_bad_input(case: str) -> None:
    make, words = ERRORS[case]
    with pytest.raises(RuntimeError, match=rf"crysbench\.triplets: .*{words}"):
        native_triplets(*make())


@pytest.mark.parametrize("case", ["unsorted_edge_i", "vectors_wrong_rows", "edge_i_int32"])
def test_facade_rejects_bad_input(case: str) -> None:
    make, _ = ERRORS[case]
    with pytest.raises(ValueError, match=r"crysbench\.triplets: "):
        ops.triplets(*make())


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", ["degrees_0_1_2_many", "empty_edges", "collinear_antiparallel"])
def test_opcheck(case: str, dtype) -> None:
    ops._lib()
    torch.library.opcheck(torch.ops.crysbench.triplets.default, CASES[case](dtype))
