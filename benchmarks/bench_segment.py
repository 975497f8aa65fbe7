"""Segment / scatter reductions and the fused gather-multiply-scatter against the peers a user would
otherwise pick: torch ``index_add_`` / ``scatter_reduce_`` / ``segment_reduce``, the unfused
index_select-mul-index_add_ message passing, and torch_scatter when it is installed.

    python -m pytest benchmarks/bench_segment.py --benchmark-only
    CRYSBENCH_BENCH_QUICK=1 ...     small inputs, for a smoke run
    CRYSBENCH_BENCH_THREADS=N ...   intra-op threads (default 2)

Default sizes: 10^6 edges x 128 float32 features reduced into 10^5 nodes. Every candidate's result is
checked against torch's before it is timed. Groups hold one reduction and index layout each, so the
table of a group compares the candidates directly.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch

import crysbench.ops as ops

try:
    import torch_scatter
except ImportError:  # sdist-only on PyPI; the comparison is skipped without it
    torch_scatter = None

QUICK = os.environ.get("CRYSBENCH_BENCH_QUICK") == "1"
E, N, F = (20_000, 2_000, 32) if QUICK else (1_000_000, 100_000, 128)
THREADS = int(os.environ.get("CRYSBENCH_BENCH_THREADS", "2"))
DTYPE = torch.float32
TORCH_AMAX = {"sum": "sum", "mean": "mean", "max": "amax"}


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


@pytest.fixture(scope="module", autouse=True)
def _threads():
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data() -> dict:
    """Seeded inputs: src [E, F], unsorted and sorted index [E], CSR ptr [N + 1], and x [N, F]."""
    gen = torch.Generator().manual_seed(0)
    index = torch.randint(0, N, (E,), generator=gen)
    sorted_index = index.sort().values
    ptr = torch.zeros(N + 1, dtype=torch.long)
    ptr[1:] = torch.bincount(sorted_index, minlength=N).cumsum(0)
    return {
        "src": torch.randn(E, F, generator=gen, dtype=DTYPE),
        "unsorted": index,
        "sorted": sorted_index,
        "ptr": ptr,
        "x": torch.randn(N, F, generator=gen, dtype=DTYPE),
        "src_index": torch.randint(0, N, (E,), generator=gen),
    }


def _info(benchmark, **extra) -> None:
    benchmark.extra_info.update(
        edges=E,
        nodes=N,
        features=F,
        dtype=str(DTYPE),
        threads=torch.get_num_threads(),
        torch=torch.__version__,
        device="cpu",
        commit=_git_commit(),
        quick=QUICK,
        **extra,
    )


def _check(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    # float32 sums of different lengths/orders: relative tolerance on the largest value
    tol = 1e-4 * max(1.0, want.abs().max().item())
    diff = (got - want).abs().max().item()
    assert diff <= tol, f"{what}: differs from torch by {diff} > {tol}; not timing a wrong result"


# ---------------------------------------------------------------------------------------------
# scatter: unsorted and sorted index
# ---------------------------------------------------------------------------------------------
def _torch_scatter_reduce(src, index, reduce):
    if reduce == "sum":
        return torch.zeros(N, F, dtype=src.dtype).index_add_(0, index, src)
    idx = index.view(-1, 1).expand_as(src)
    return torch.zeros(N, F, dtype=src.dtype).scatter_reduce_(
        0, idx, src, TORCH_AMAX[reduce], include_self=False
    )


SCATTER_IMPLS = {
    "crysbench": lambda src, index, reduce: ops.scatter(src, index, N, reduce),
    "torch": _torch_scatter_reduce,
}
if torch_scatter is not None:
    SCATTER_IMPLS["torch_scatter"] = lambda src, index, reduce: torch_scatter.scatter(
        src, index, dim=0, dim_size=N, reduce=reduce
    )


@pytest.mark.parametrize("impl", list(SCATTER_IMPLS))
@pytest.mark.parametrize("layout", ("unsorted", "sorted"))
@pytest.mark.parametrize("reduce", ("sum", "mean", "max"))
def test_scatter(benchmark, data, reduce, layout, impl):
    benchmark.group = f"scatter-{reduce}-{layout}"
    src, index = data["src"], data[layout]
    fn = SCATTER_IMPLS[impl]
    _check(fn(src, index, reduce), _torch_scatter_reduce(src, index, reduce), f"{impl} scatter {reduce}")
    peer = "index_add_" if reduce == "sum" else f"scatter_reduce_({TORCH_AMAX[reduce]})"
    _info(benchmark, op="scatter", reduce=reduce, index=layout, impl=impl if impl != "torch" else peer)
    benchmark(fn, src, index, reduce)


# ---------------------------------------------------------------------------------------------
# CSR segments
# ---------------------------------------------------------------------------------------------
def _torch_segment(src, ptr, reduce):
    out = torch.segment_reduce(src, reduce, offsets=ptr, axis=0, unsafe=True)
    # empty segments come out as nan (mean) or -inf (max); crysbench and torch_scatter give 0
    return out if reduce == "sum" else out.nan_to_num(nan=0.0, neginf=0.0)


SEGMENT_IMPLS = {
    "crysbench": lambda src, ptr, reduce: ops.segment_csr(src, ptr, reduce),
    "torch.segment_reduce": _torch_segment,
}
if torch_scatter is not None:
    SEGMENT_IMPLS["torch_scatter"] = lambda src, ptr, reduce: torch_scatter.segment_csr(
        src, ptr, reduce=reduce
    )


@pytest.mark.parametrize("impl", list(SEGMENT_IMPLS))
@pytest.mark.parametrize("reduce", ("sum", "mean", "max"))
def test_segment_csr(benchmark, data, reduce, impl):
    benchmark.group = f"segment_csr-{reduce}"
    src, ptr = data["src"], data["ptr"]
    fn = SEGMENT_IMPLS[impl]
    _check(
        fn(src, ptr, reduce), _torch_scatter_reduce(src, data["sorted"], reduce), f"{impl} segment {reduce}"
    )
    _info(benchmark, op="segment_csr", reduce=reduce, impl=impl)
    benchmark(fn, src, ptr, reduce)


# ---------------------------------------------------------------------------------------------
# gather_mul_scatter: out[dst[e]] += x[src[e]] * w[e]
# ---------------------------------------------------------------------------------------------
def _unfused(x, w, src_index, dst_index):
    return torch.zeros(N, F, dtype=x.dtype).index_add_(0, dst_index, x.index_select(0, src_index) * w)


GMS_IMPLS = {
    "crysbench": lambda x, w, s, d: ops.gather_mul_scatter(x, w, s, d, N),
    "torch unfused": _unfused,
}


@pytest.mark.parametrize("impl", list(GMS_IMPLS))
@pytest.mark.parametrize("layout", ("unsorted", "sorted"))
def test_gather_mul_scatter(benchmark, data, layout, impl):
    benchmark.group = f"gather_mul_scatter-{layout}"
    x, w, s, d = data["x"], data["src"], data["src_index"], data[layout]
    fn = GMS_IMPLS[impl]
    _check(fn(x, w, s, d), _unfused(x, w, s, d), f"{impl} gather_mul_scatter")
    _info(benchmark, op="gather_mul_scatter", dst_index=layout, impl=impl)
    benchmark(fn, x, w, s, d)
