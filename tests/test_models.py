"""The contract every registered crystal model must satisfy, plus the graph and feature plumbing.

Each model runs at its smallest ladder rung in float64 on tiny seeded random crystals (3–6 atoms,
4 Å cutoff). Invariance tests rebuild the graph from the transformed crystals, so they also check
that the neighbour list, the k-nearest cap and the line graph transform consistently.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from crysbench import ops, synthetic
from crysbench.features import atom_feature_table, feature_names
from crysbench.graph import GraphBatch, build_graph, collate, edge_vectors, triplet_cosines
from crysbench.models import MODELS, build

CUTOFF = 4.0  # Å: small, so the reference ops stay fast
MAX_NEIGHBORS = 12
N_TARGETS = 2
TOL = 1e-9  # float64
NAMES = sorted(MODELS)

# Exact parameter counts of every ladder rung (n_targets = 1): a deliberate change updates this table.
LADDER = {
    "alignn": [3001, 11101, 34337, 109873, 397441, 1292545],
    "cgcnn": [3141, 12281, 36889, 98681, 354945, 1214625],
    "crysgnn": [2965, 12697, 36313, 95137, 339409, 1109505],
    "equiformer": [2761, 13121, 35057, 115589, 362801, 1476225],
    "transformer": [3003, 13029, 38509, 127725, 469137, 1363089],
}





# ------------------------------------------------------------------------------------------------
# crystals and helpers
# ------------------------------------------------------------------------------------------------
Crystal = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # numbers [n], positions [n, 3] Å, cell [3, 3] Å


def crystals(seed: int = 0, n: int = 3) -> list[Crystal]:
    pos, cells, _, ptr = synthetic.random_batch(n, atoms=(3, 6), seed=seed)
    rng = np.random.default_rng(seed + 1000)
    out = []
    for b in range(n):
        lo, hi = int(ptr[b]), int(ptr[b + 1])
        out.append((torch.tensor(rng.integers(1, 101, size=hi - lo)), pos[lo:hi], cells[b]))
    return out


def graph(xtals: list[Crystal], max_neighbors: int | None = MAX_NEIGHBORS) -> GraphBatch:
    z, p, c = zip(*xtals, strict=True)
    return build_graph(z, p, c, [torch.ones(3, dtype=torch.bool)] * len(xtals), cutoff=CUTOFF,
                       max_neighbors=max_neighbors, line_graph=True)


def model(name: str, seed: int = 0, train: bool = False) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = next(iter(MODELS[name].size_ladder(n_targets=N_TARGETS).values()))
    m = MODELS[name](config).double()
    return m.train(train)


def assert_close(a: torch.Tensor, b: torch.Tensor, what: str, tol: float = TOL) -> None:
    diff = float((a - b).detach().abs().max())
    assert diff <= tol, f"{what}: max |difference| {diff:.3g} > tolerance {tol:.1g}"


def random_rotation(seed: int, reflect: bool = False) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=gen, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    if (torch.det(q) < 0) != reflect:
        q = -q
    return q


@pytest.fixture(scope="module")
def base() -> tuple[list[Crystal], GraphBatch]:
    xtals = crystals(0)
    return xtals, graph(xtals)


# ------------------------------------------------------------------------------------------------
# the model contract
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_shapes_and_finite(name, base):
    _, g = base
    m = model(name)
    out, emb = m(g), m.node_embeddings(g)
    assert out.shape == (3, N_TARGETS) and out.dtype == torch.float64
    assert emb.dim() == 2 and emb.shape[0] == g.num_atoms
    assert bool(torch.isfinite(out).all()) and bool(torch.isfinite(emb).all())


# The transformed crystals' graphs are built once per module and shared by every model.
@pytest.fixture(scope="module")
def permuted(base) -> GraphBatch:
    gen = torch.Generator().manual_seed(1)
    out = []
    for z, p, c in base[0]:
        perm = torch.randperm(z.shape[0], generator=gen)
        out.append((z[perm], p[perm], c))
    return graph(out)


@pytest.fixture(scope="module")
def moved(base) -> GraphBatch:
    step = torch.tensor([[1.0, -2.0, 1.0]], dtype=torch.float64)  # in lattice vectors
    return graph([(z, p.clone().index_add_(0, torch.tensor([0]), step @ c), c) for z, p, c in base[0]])


@pytest.fixture(scope="module")
def supercell(base) -> GraphBatch:
    # The k-nearest cap keeps every edge tied with the k-th, so it selects the same bonds in a supercell.
    return graph([(z.repeat(2), torch.cat([p, p + c[0]]), torch.stack([2 * c[0], c[1], c[2]]))
                  for z, p, c in base[0]])


@pytest.fixture(scope="module")
def singles(base) -> list[GraphBatch]:
    return [graph([xtal]) for xtal in base[0]]


@pytest.fixture(scope="module", params=[False, True], ids=["rotation", "reflection"])
def turned(request, base) -> tuple[torch.Tensor, GraphBatch]:
    rot = random_rotation(7, reflect=request.param)
    return rot, graph([(z, p @ rot.T, c @ rot.T) for z, p, c in base[0]])


@pytest.mark.parametrize("name", NAMES)
def test_permutation_invariance(name, base, permuted):
    m = model(name)
    assert_close(m(permuted), m(base[1]), f"{name}: atoms permuted within each crystal")


@pytest.mark.parametrize("name", NAMES)
def test_lattice_shift_invariance(name, base, moved):
    assert not torch.equal(moved.shifts, base[1].shifts), "the shifted atom should change the cell shifts"
    m = model(name)
    assert_close(m(moved), m(base[1]), f"{name}: atom 0 moved by (1, -2, 1) lattice vectors")


@pytest.mark.parametrize("name", NAMES)
def test_supercell_invariance(name, base, supercell):
    m = model(name)
    assert_close(m(supercell), m(base[1]), f"{name}: 2x1x1 supercell of an intensive target", tol=1e-8)


@pytest.mark.parametrize("name", NAMES)
def test_batch_equals_parts(name, base, singles):
    m = model(name)
    together = m(base[1])
    for b, g in enumerate(singles):
        assert_close(m(g)[0], together[b], f"{name}: crystal {b} alone vs in a batch of 3")


@pytest.mark.parametrize("name", NAMES)
def test_fixed_seed_fixed_output(name, base):
    _, g = base
    first, again, other = model(name, 0)(g), model(name, 0)(g), model(name, 1)(g)
    assert torch.equal(first, again), f"{name}: same seed gave different outputs"
    assert not torch.allclose(first, other), f"{name}: seeds 0 and 1 gave the same outputs"


@pytest.mark.parametrize("name", NAMES)
def test_rotation_invariance(name, base, turned):
    m = model(name)
    assert_close(m(turned[1]), m(base[1]), f"{name}: crystals rotated (or reflected)")


def test_equiformer_vectors_are_equivariant(base, turned):
    rot, g_rot = turned
    m = model("equiformer")
    s, v = m.features(base[1])
    s_rot, v_rot = m.features(g_rot)
    assert v.abs().max() > 1e-3, "vector features vanished; the equivariance check would be empty"
    assert_close(s_rot, s, "equiformer scalars under O(3)")
    assert_close(v_rot, torch.einsum("ab,nbc->nac", rot, v), "equiformer vectors under O(3)")


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_every_parameter(name, base):
    _, g = base
    positions = g.positions.clone().requires_grad_(True)
    g = GraphBatch(**{**g.__dict__, "positions": positions})
    m = model(name, train=True)
    m(g).square().sum().backward()
    dead = [n for n, p in m.named_parameters() if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    assert not dead, f"{name}: no gradient reaches {dead}"
    assert bool(torch.isfinite(positions.grad).all()), f"{name}: non-finite gradient w.r.t. positions"
    # Forces of a translation-invariant model sum to zero within each crystal.
    assert_close(ops.segment_csr(positions.grad, g.ptr, "sum"), torch.zeros(3, 3), f"{name}: net force")


@pytest.mark.parametrize("name", NAMES)
def test_float32_model_takes_float64_graph(name, base):
    m64 = model(name)
    m32 = model(name).float()
    assert_close(m32(base[1]).double(), m64(base[1]), f"{name}: float32 vs float64", tol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_size_ladder(name):
    cls = MODELS[name]
    counts = {rung: cls(config).n_params() for rung, config in cls.size_ladder().items()}
    print(f"\n{name} ladder: " + ", ".join(f"{r}={n:,} (10^{math.log10(n):.2f})" for r, n in counts.items()))
    values = list(counts.values())
    assert values == sorted(values), f"{name}: ladder not increasing: {counts}"
    assert values[-1] / values[0] >= 100, f"{name}: ladder spans < 2 decades: {counts}"
    assert 10**3.3 <= values[0] <= 10**3.7 and 10**5.9 <= values[-1] <= 10**6.3, f"{name}: {counts}"
    assert values == LADDER[name], f"{name}: parameter counts changed: {values} != {LADDER[name]}"
    m = cls(next(iter(cls.size_ladder().values())))
    assert m.n_params() == sum(p.numel() for p in set(m.parameters()))


def test_registry_builds_by_name():
    m = build("cgcnn", n_targets=3, width=8, depth=1)
    assert m.config.n_targets == 3 and m.name == "cgcnn"
    with pytest.raises(KeyError, match="unknown model 'nope'"):
        build("nope")
    with pytest.raises(ValueError, match="divisible by heads"):
        build("transformer", width=10, heads=4)


# ------------------------------------------------------------------------------------------------
# graph and feature plumbing
# ------------------------------------------------------------------------------------------------
def test_collate_equals_joint_build(base):
    xtals, g = base
    joined = collate([graph([x]) for x in xtals])
    for name, value in g.__dict__.items():
        other = getattr(joined, name)
        assert (value is None and other is None) or torch.equal(value, other), f"collate differs in {name}"


def test_edge_vectors_match_neighbor_list(base):
    _, g = base
    vec = edge_vectors(g)
    i, j, s, d, v = ops.neighbor_list(g.positions, g.cells, g.pbc, g.ptr, CUTOFF)
    keep, _ = ops.knn_cap(i, d, g.num_atoms, MAX_NEIGHBORS)
    assert_close(vec, v[keep], "edge_vectors vs neighbor_list vectors")
    assert bool((vec.norm(dim=1) < CUTOFF).all())
    cos = triplet_cosines(g, vec)
    assert_close(cos, ops.triplets(g.edge_i, vec, g.num_atoms)[2], "triplet cosines")


def test_graph_to_and_errors(base):
    _, g = base
    g32 = g.to("cpu", torch.float32)
    assert g32.positions.dtype == torch.float32 and g32.shifts.dtype == torch.long
    bare = GraphBatch(**{**g.__dict__, "edge_a": None, "edge_b": None})
    with pytest.raises(ValueError, match="no line graph"):
        triplet_cosines(bare, edge_vectors(bare))  # ALIGNN itself now builds a missing line graph
    with pytest.raises(ValueError, match="crystal 0 has 2 numbers but 1 positions"):
        build_graph([[1, 2]], [[[0.0, 0.0, 0.0]]], [torch.eye(3) * 3], [[True] * 3])
    with pytest.raises(ValueError, match="outside 1..100"):
        build_graph([[0]], [[[0.0, 0.0, 0.0]]], [torch.eye(3) * 3], [[True] * 3])


def test_atom_features():
    table = atom_feature_table()
    assert table.shape == (101, len(feature_names())) and torch.equal(table, atom_feature_table())
    # the shipped raw table still matches pymatgen (NaN and None both mean "unknown")
    from crysbench.features import element_properties, shipped_element_properties

    shipped = shipped_element_properties()
    for z in range(1, 101):
        live = {k: None if isinstance(v, float) and v != v else v for k, v in element_properties(z).items()}
        assert shipped[z] == pytest.approx(live), z
    assert bool((table[0] == 0).all()) and bool((table[1:].sum(1) == 9).all())  # 9 one-hot blocks
    assert torch.unique(table[1:], dim=0).shape[0] == 100, "two elements share a feature row"
    he = dict(zip(feature_names(), table[2].tolist(), strict=True))
    assert he["electronegativity=unknown"] == 1 and he["valence_electrons=2"] == 1 and he["period=1"] == 1
