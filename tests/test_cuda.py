"""CUDA kernels: parity with the pure-torch reference for every op on adversarial cases, and a
compile check of the CUDA sources that runs wherever nvcc is present (even with no GPU).

The parity tests need a GPU and a build with CUDA kernels; without a GPU they are skipped with the
reason. A GPU machine whose build lacks the CUDA kernels fails loudly instead of skipping.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import crysbench.ops as ops
from crysbench.ops import reference
from crysbench.synthetic import fcc_supercell, random_batch

ROOT = Path(__file__).resolve().parents[1]
HAS_GPU = torch.cuda.is_available()
needs_gpu = pytest.mark.skipif(not HAS_GPU, reason="no CUDA device (torch.cuda.is_available() is False)")
DTYPES = (torch.float32, torch.float64)
TOL = {torch.float16: 2e-2, torch.bfloat16: 1e-1, torch.float32: 2e-5, torch.float64: 1e-10}


@pytest.fixture(scope="module")
def cuda_ops():
    """torch.ops.crysbench with CUDA kernels; fails (not skips) when the build has none."""
    info = ops.build_info()
    if not info["with_cuda"]:
        pytest.fail(f"a CUDA device is present but crysbench was built without CUDA kernels ({info}); "
                    "rebuild with CRYSBENCH_CUDA=ON against a CUDA torch")
    ops._lib()
    return torch.ops.crysbench


def cuda(*tensors):
    return tuple(t.cuda() if isinstance(t, torch.Tensor) else t for t in tensors)


def assert_same(case: str, got, want) -> None:
    """Integer outputs equal exactly, floating outputs within TOL of their dtype (or both NaN)."""
    for n, (g, w) in enumerate(zip(got, want, strict=True)):
        g = g.cpu()
        assert g.dtype == w.dtype and g.shape == w.shape, \
            f"{case}: output {n} is {g.dtype} {tuple(g.shape)}, expected {w.dtype} {tuple(w.shape)}"
        if not g.is_floating_point():
            assert torch.equal(g, w), f"{case}: output {n} differs at {(g != w).nonzero()[:5].tolist()}"
            continue
        tol = TOL[g.dtype]
        diff = ((g.double() - w.double()).abs() / (1 + w.double().abs())).nan_to_num(0.0)
        assert torch.equal(g.isnan(), w.isnan()), f"{case}: output {n} NaN pattern differs"
        worst = diff.max().item() if diff.numel() else 0.0
        assert worst <= tol, f"{case}: output {n} max rel diff {worst:.3g} > tol {tol:.1g}"


# ------------------------------------------------------------------------------------------------
# graphs: neighbour list, k-nearest cap, triplets
# ------------------------------------------------------------------------------------------------
def _partial_pbc(dtype):
    positions, cells, pbc, ptr = random_batch(3, atoms=(2, 6), seed=7, dtype=dtype)
    pbc[0, 2] = False
    pbc[1] = False
    return positions, cells, pbc, ptr


BATCHES = {  # (positions, cells, pbc, ptr), cutoff Å
    "random_triclinic_small_cells": (lambda dt: random_batch(4, atoms=(1, 8), seed=3, dtype=dt), 4.5),
    "fcc_exact_ties": (lambda dt: fcc_supercell(2, jitter=0.0, dtype=dt), 2.6),
    "partial_pbc": (_partial_pbc, 4.0),
    "empty_batch": (lambda dt: (torch.zeros(0, 3, dtype=dt), torch.zeros(0, 3, 3, dtype=dt),
                                torch.zeros(0, 3, dtype=torch.bool), torch.zeros(1, dtype=torch.long)), 3.0),
}


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", sorted(BATCHES))
def test_neighbor_list(cuda_ops, case, dtype) -> None:
    make, cutoff = BATCHES[case]
    batch = make(dtype)
    for return_vectors in (True, False):
        got = cuda_ops.neighbor_list(*cuda(*batch), cutoff, return_vectors)
        assert_same(f"{case} vectors={return_vectors}", got,
                     reference.neighbor_list(*batch, cutoff, return_vectors))


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("k", [1, 4, 12])
@pytest.mark.parametrize("case", ["random_triclinic_small_cells", "fcc_exact_ties"])
def test_knn_cap(cuda_ops, case, k, dtype) -> None:
    make, cutoff = BATCHES[case]
    positions, cells, pbc, ptr = make(dtype)
    edge_i, _, _, dist, _ = reference.neighbor_list(positions, cells, pbc, ptr, cutoff)
    n = positions.shape[0]
    assert_same(f"{case} k={k}", cuda_ops.knn_cap(*cuda(edge_i, dist), n, k, 1e-6),
                reference.knn_cap(edge_i, dist, n, k, 1e-6))


@needs_gpu
def test_knn_cap_empty(cuda_ops) -> None:
    edge_i, dist = torch.zeros(0, dtype=torch.long), torch.zeros(0)
    got = cuda_ops.knn_cap(*cuda(edge_i, dist), 3, 2, 1e-8)
    assert_same("empty", got, reference.knn_cap(edge_i, dist, 3, 2))


def _triplet_cases(dtype):
    gen = torch.Generator().manual_seed(11)
    degrees = torch.tensor([0, 1, 2, 9, 0, 3, 0])
    positions, cells, pbc, ptr = fcc_supercell(2, jitter=0.0, dtype=dtype)
    fcc_i, _, _, _, fcc_v = reference.neighbor_list(positions, cells, pbc, ptr, 2.6)
    return {
        "degrees_0_1_2_many": (torch.repeat_interleave(torch.arange(7), degrees),
                               torch.randn(int(degrees.sum()), 3, generator=gen, dtype=dtype), 7),
        "empty": (torch.zeros(0, dtype=torch.long), torch.zeros(0, 3, dtype=dtype), 5),
        "antiparallel": (torch.tensor([0, 0, 0]),
                         torch.tensor([[1.0, 0, 0], [-2, 0, 0], [3, 0, 0]], dtype=dtype), 1),
        "fcc": (fcc_i, fcc_v, positions.shape[0]),
    }


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_triplets(cuda_ops, dtype) -> None:
    for case, (edge_i, vectors, n) in _triplet_cases(dtype).items():
        got = cuda_ops.triplets(*cuda(edge_i, vectors), n)
        assert_same(case, got, reference.triplets(edge_i, vectors, n))
        assert_same(f"{case} vs CPU native", got, torch.ops.crysbench.triplets(edge_i, vectors, n))


# ------------------------------------------------------------------------------------------------
# reductions
# ------------------------------------------------------------------------------------------------
def _reduction_input(dtype, shape=(40, 2, 3), seed=0):
    """Small integer-valued floats (many exact ties for max), a NaN, and an index with gaps."""
    gen = torch.Generator().manual_seed(seed)
    src = torch.randint(-3, 4, shape, generator=gen).to(dtype)
    src[5, 1, 2] = float("nan")
    index = torch.randint(0, 9, (shape[0],), generator=gen)
    index[index == 4] = 5  # row 4 stays empty
    return src, index, 10  # rows 9 and 4 empty


def _dtypes_for(reduce):
    return DTYPES + ((torch.float16, torch.bfloat16) if reduce != "max" else ())


REDUCE_GRID = [(r, dt) for r in ("sum", "mean", "max") for dt in _dtypes_for(r)]


@needs_gpu
@pytest.mark.parametrize(("reduce", "dtype"), REDUCE_GRID, ids=lambda v: str(v))
def test_scatter(cuda_ops, reduce, dtype) -> None:
    src, index, n = _reduction_input(dtype)
    assert_same(f"scatter {reduce}", cuda_ops.scatter(*cuda(src, index), n, reduce),
                reference.scatter(src, index, n, reduce))
    assert_same(f"scatter {reduce} no rows", cuda_ops.scatter(*cuda(src[:0], index[:0]), n, reduce),
                reference.scatter(src[:0], index[:0], n, reduce))


@needs_gpu
@pytest.mark.parametrize(("reduce", "dtype"), REDUCE_GRID, ids=lambda v: str(v))
def test_segment_csr(cuda_ops, reduce, dtype) -> None:
    src, index, n = _reduction_input(dtype)
    index = index.sort().values
    ptr = torch.cat([torch.zeros(1, dtype=torch.long), torch.bincount(index, minlength=n).cumsum(0)])
    assert_same(f"segment_csr {reduce}", cuda_ops.segment_csr(*cuda(src, ptr), reduce),
                reference.segment_csr(src, ptr, reduce))


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES + (torch.float16,), ids=str)
def test_gather_mul_scatter(cuda_ops, dtype) -> None:
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(12, 5, generator=gen).to(dtype)
    w = torch.randn(30, 5, generator=gen).to(dtype)
    src, dst = torch.randint(0, 12, (30,), generator=gen), torch.randint(0, 7, (30,), generator=gen)
    got = cuda_ops.gather_mul_scatter(*cuda(x, w, src, dst), 9)
    assert_same("gather_mul_scatter", (got,), (reference.gather_mul_scatter(x, w, src, dst, 9),))


@needs_gpu
def test_cuda_errors_are_clear(cuda_ops) -> None:
    with pytest.raises(RuntimeError, match=r"crysbench\.triplets: edge_i must be sorted"):
        cuda_ops.triplets(*cuda(torch.tensor([1, 0]), torch.ones(2, 3)), 2)
    with pytest.raises(RuntimeError, match=r"crysbench\.scatter: index values must lie in"):
        cuda_ops.scatter(*cuda(torch.ones(2, 1), torch.tensor([0, 3])), 2, "sum")


@needs_gpu
def test_opcheck_cuda(cuda_ops) -> None:
    edge_i, vectors, n = _triplet_cases(torch.float64)["degrees_0_1_2_many"]
    torch.library.opcheck(cuda_ops.triplets.default, (*cuda(edge_i, vectors), n))
    src, index, n = _reduction_input(torch.float64)
    torch.library.opcheck(cuda_ops.scatter.default, (*cuda(src.flatten(1), index), n, "max"))
    batch = cuda(*BATCHES["partial_pbc"][0](torch.float64))
    torch.library.opcheck(cuda_ops.neighbor_list.default, (*batch, 4.0, True))


# ------------------------------------------------------------------------------------------------
# compile check (no GPU needed)
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.skipif(shutil.which(os.environ.get("NVCC", "nvcc")) is None, reason="nvcc is not on PATH")
def test_cuda_sources_compile(tmp_path) -> None:
    """nvcc compiles a representative CUDA source (shared header, ATen ops, dispatch, registration).

    One file keeps this under a minute; `csrc/cuda/compile_check.sh` with no arguments checks them all.
    """
    script = ROOT / "csrc" / "cuda" / "compile_check.sh"
    result = subprocess.run(["bash", str(script), str(ROOT / "csrc" / "cuda" / "triplets_cuda.cu")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"nvcc failed:\n{result.stdout}\n{result.stderr[-4000:]}"
    assert "ok      triplets_cuda.cu" in result.stdout, result.stdout
