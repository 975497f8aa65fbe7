"""Parity of the native segment / scatter / gather_mul_scatter kernels with the pure-torch reference.

Values are small integers stored as floats, so sums are exact and max has ties on purpose: the
native arg must equal the reference's (the smallest edge index attaining the max, E when empty).
"""

from __future__ import annotations

import zlib

import pytest
import torch

import crysbench.ops as ops
from crysbench.ops import reference

REDUCTIONS = ("sum", "mean", "max")
DTYPES = (torch.float32, torch.float64)
TOL = {torch.float32: 1e-5, torch.float64: 1e-12}


def _seed(*parts) -> torch.Generator:
    """A generator seeded from the test's parameters (str hashes are salted per process)."""
    return torch.Generator().manual_seed(zlib.crc32(repr(parts).encode()))


def native():
    """torch.ops.crysbench with the fake kernels and autograd formulas registered."""
    return ops._lib()


def _index(case: str, gen: torch.Generator) -> tuple[torch.Tensor, int]:
    """(index [E], dim_size) of a named layout."""
    if case == "random":
        return torch.randint(0, 40, (500,), generator=gen), 40
    if case == "sorted":
        return torch.randint(0, 40, (500,), generator=gen).sort().values, 40
    if case == "duplicated":
        return torch.tensor([3, 7, 3, 3, 7, 7, 3] * 20), 9
    if case == "one_segment":
        return torch.zeros(300, dtype=torch.long), 1
    if case == "empty_ends":  # rows 0, 5 and 9 are empty
        idx = torch.randint(1, 9, (200,), generator=gen)
        return idx[idx != 5], 10
    if case == "empty_src":
        return torch.zeros(0, dtype=torch.long), 6
    if case == "dim_size_larger":
        return torch.randint(0, 5, (100,), generator=gen), 20
    if case == "parallel":  # big enough to split rows between threads
        return torch.randint(0, 300, (20000,), generator=gen), 300
    if case == "parallel_sorted":
        return torch.randint(0, 300, (20000,), generator=gen).sort().values, 300
    if case == "few_big_segments":  # a row holds most edges: feature columns are split instead
        return torch.cat([torch.zeros(6000, dtype=torch.long), torch.randint(0, 3, (50,), generator=gen)]), 3
    raise KeyError(case)


CASES = (
    "random",
    "sorted",
    "duplicated",
    "one_segment",
    "empty_ends",
    "empty_src",
    "dim_size_larger",
    "parallel",
    "parallel_sorted",
    "few_big_segments",
)


def _src(e: int, f: int, dtype: torch.dtype, gen: torch.Generator) -> torch.Tensor:
    """Integer-valued floats in [-3, 3]: exact sums, many ties for max."""
    return torch.randint(-3, 4, (e, f), generator=gen).to(dtype)


def _ptr(sorted_index: torch.Tensor, n: int) -> torch.Tensor:
    ptr = torch.zeros(n + 1, dtype=torch.long)
    ptr[1:] = torch.bincount(sorted_index, minlength=n).cumsum(0)
    return ptr


def _assert_close(case: str, got: torch.Tensor, want: torch.Tensor, tol: float) -> None:
    assert got.shape == want.shape, f"{case}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    diff = (got - want).abs().max().item() if got.numel() else 0.0
    assert diff <= tol, f"{case}: max difference {diff} > tolerance {tol}"


def _check_pair(case: str, got, want, dtype, reduce: str) -> None:
    _assert_close(case, got[0], want[0], TOL[dtype])
    if reduce == "max":
        assert torch.equal(got[1], want[1]), (
            f"{case}: arg differs at {(got[1] != want[1]).nonzero()[:5].tolist()}"
        )
    else:
        assert got[1].numel() == 0 and got[1].dtype == torch.long, f"{case}: arg must be empty int64"


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduce", REDUCTIONS)
@pytest.mark.parametrize("feat", (1, 5, 131))
def test_scatter_parity(case, dtype, reduce, feat):
    gen = _seed(case, feat)
    index, n = _index(case, gen)
    src = _src(index.numel(), feat, dtype, gen)
    got = native().scatter(src, index, n, reduce)
    _check_pair(f"scatter/{case}/F={feat}", got, reference.scatter(src, index, n, reduce), dtype, reduce)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduce", REDUCTIONS)
@pytest.mark.parametrize("feat", (1, 131))
def test_segment_csr_parity(case, dtype, reduce, feat):
    gen = _seed(case, feat, "csr")
    index, n = _index(case, gen)
    index = index.sort().values
    src = _src(index.numel(), feat, dtype, gen)
    ptr = _ptr(index, n)
    got = native().segment_csr(src, ptr, reduce)
    _check_pair(f"segment_csr/{case}/F={feat}", got, reference.segment_csr(src, ptr, reduce), dtype, reduce)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_gather_mul_scatter_parity(case, dtype):
    gen = _seed(case, "gms")
    dst, n = _index(case, gen)
    x = _src(17, 6, dtype, gen)
    w = _src(dst.numel(), 6, dtype, gen)
    src_index = torch.randint(0, 17, (dst.numel(),), generator=gen)
    got = native().gather_mul_scatter(x, w, src_index, dst, n)
    _assert_close(
        f"gather_mul_scatter/{case}", got, reference.gather_mul_scatter(x, w, src_index, dst, n), TOL[dtype]
    )


@pytest.mark.parametrize("reduce", REDUCTIONS)
def test_facade_flattens_trailing_dims(reduce):
    gen = torch.Generator().manual_seed(3)
    index = torch.randint(0, 7, (60,), generator=gen)
    src = _src(60, 12, torch.float64, gen).view(60, 4, 3)
    out = ops.scatter(src, index, 9, reduce)
    assert out.shape == (9, 4, 3)
    _assert_close("scatter 3-d", out, reference.scatter(src, index, 9, reduce)[0], 1e-12)
    index = index.sort().values
    ptr = _ptr(index, 9)
    out = ops.segment_csr(src, ptr, reduce)
    _assert_close("segment_csr 3-d", out, reference.segment_csr(src, ptr, reduce)[0], 1e-12)


@pytest.mark.parametrize("reduce", REDUCTIONS)
def test_facade_empty_src(reduce):
    src = torch.zeros(0, 4, 3)
    out = ops.scatter(src, torch.zeros(0, dtype=torch.long), 5, reduce)
    assert out.shape == (5, 4, 3) and not out.any()
    out = ops.segment_csr(src, torch.zeros(4, dtype=torch.long), reduce)
    assert out.shape == (3, 4, 3) and not out.any()


@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float16))
@pytest.mark.parametrize("reduce", REDUCTIONS)
def test_half_precision_accumulates_in_float(dtype, reduce):
    gen = torch.Generator().manual_seed(11)
    for index in (torch.randint(0, 4, (3000,), generator=gen), torch.zeros(3000, dtype=torch.long)):
        src = torch.rand(3000, 8, generator=gen)
        got, arg = native().scatter(src.to(dtype), index, 4, reduce)
        want, want_arg = reference.scatter(src.to(dtype).float(), index, 4, reduce)
        # a bf16 running sum of 3000 values in [0, 1) would drift by far more than this
        _assert_close(f"{dtype} {reduce}", got.float(), want, 0.01 * want.abs().max().item())
        if reduce == "max":
            assert torch.equal(arg, want_arg)


def test_max_propagates_nan():
    src = torch.tensor([[1.0, 2.0], [float("nan"), 5.0], [3.0, float("nan")], [4.0, 0.0]])
    for index in (torch.tensor([0, 0, 0, 0]), torch.tensor([0, 1, 0, 0])):
        out, _ = native().scatter(src, index, 2, "max")
        assert torch.isnan(out[0]).all() or torch.isnan(out[0, 1]), f"NaN lost: {out}"
    out, arg = native().segment_csr(src, torch.tensor([0, 4]), "max")
    assert torch.isnan(out).all() and arg.tolist() == [[1, 2]]


def test_max_of_minus_infinity_keeps_first_edge():
    src = torch.full((3, 2), float("-inf"))
    for op in (
        lambda: native().scatter(src, torch.tensor([1, 0, 1]), 3, "max"),
        lambda: native().segment_csr(src, torch.tensor([0, 1, 3, 3]), "max"),
    ):
        out, arg = op()
        assert torch.isinf(out[:2]).all() and out[2].eq(0).all()
    out, arg = native().scatter(src, torch.tensor([1, 0, 1]), 3, "max")
    assert arg.tolist() == [[1, 1], [0, 0], [3, 3]]


# ---------------------------------------------------------------------------------------------
# threads: owner-computes kernels give bitwise identical results for any thread count
# ---------------------------------------------------------------------------------------------
def _run_all(src, index, x, w, src_index):
    sorted_index = index.sort().values
    ptr = _ptr(sorted_index, 500)
    outs = []
    for reduce in REDUCTIONS:
        outs += list(native().scatter(src, index, 500, reduce))
        outs += list(native().scatter(src, sorted_index, 500, reduce))
        outs += list(native().segment_csr(src, ptr, reduce))
    outs.append(native().gather_mul_scatter(x, w, src_index, index, 500))
    outs.append(native().gather_mul_scatter(x, w, src_index, sorted_index, 500))
    return outs


@pytest.mark.parametrize("reduce", REDUCTIONS)
def test_large_outputs_match_reference(reduce):
    """Outputs over 8 MB come from the huge-page allocator: values, arg, gradient and lifetime."""
    gen = _seed("large", reduce)
    n, f = 20000, 128  # 10 MB float32 out, 20 MB int64 arg
    index = torch.randint(0, n, (60000,), generator=gen)
    src = _src(index.numel(), f, torch.float32, gen)
    for layout, idx in (("unsorted", index), ("sorted", index.sort().values)):
        got = native().scatter(src, idx, n, reduce)
        _check_pair(f"scatter/large-{layout}", got, reference.scatter(src, idx, n, reduce), torch.float32, reduce)
    distinct = torch.randn(src.shape, generator=gen)  # no ties: max has one gradient per row
    leaf = distinct.clone().requires_grad_()
    ops.scatter(leaf, index, n, reduce).sum().backward()
    want = distinct.clone().requires_grad_()
    reference.scatter(want, index, n, reduce)[0].sum().backward()
    _assert_close(f"scatter/large grad {reduce}", leaf.grad, want.grad, TOL[torch.float32])
    x = _src(n, f, torch.float32, gen)
    src_index = torch.randint(0, n, (index.numel(),), generator=gen)
    gms = native().gather_mul_scatter(x, src, src_index, index, n)
    _assert_close("gather_mul_scatter/large", gms, reference.gather_mul_scatter(x, src, src_index, index, n),
                  TOL[torch.float32])
    del gms, got  # freed by the allocator's own deleter


def test_one_and_two_threads_agree_bitwise():
    gen = torch.Generator().manual_seed(5)
    src = torch.randn(40000, 33, generator=gen)
    index = torch.randint(0, 500, (40000,), generator=gen)
    x = torch.randn(300, 33, generator=gen)
    src_index = torch.randint(0, 300, (40000,), generator=gen)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _run_all(src, index, x, src, src_index)
        torch.set_num_threads(2)
        two = _run_all(src, index, x, src, src_index)
    finally:
        torch.set_num_threads(before)
    for i, (a, b) in enumerate(zip(one, two, strict=True)):
        assert torch.equal(a, b), f"output {i} differs between 1 and 2 threads"


# ---------------------------------------------------------------------------------------------
# autograd and op registration
# ---------------------------------------------------------------------------------------------
def _distinct(e: int, f: int, gen: torch.Generator) -> torch.Tensor:
    """float64 values without ties (max has a gradient there)."""
    return (torch.randperm(e * f, generator=gen).double().view(e, f) / 7).requires_grad_()


@pytest.mark.parametrize("reduce", REDUCTIONS)
def test_gradcheck_scatter(reduce):
    gen = torch.Generator().manual_seed(21)
    src = _distinct(30, 3, gen)
    index = torch.randint(0, 6, (30,), generator=gen)
    index[index == 4] = 5  # row 4 stays empty
    assert torch.autograd.gradcheck(lambda s: ops.scatter(s, index, 7, reduce), (src,))


@pytest.mark.parametrize("reduce", REDUCTIONS)
def test_gradcheck_segment_csr(reduce):
    gen = torch.Generator().manual_seed(22)
    src = _distinct(20, 3, gen)
    ptr = torch.tensor([0, 4, 4, 11, 20])
    assert torch.autograd.gradcheck(lambda s: ops.segment_csr(s, ptr, reduce), (src,))


@pytest.mark.parametrize("sorted_dst", (False, True))
def test_gradcheck_gather_mul_scatter(sorted_dst):
    gen = torch.Generator().manual_seed(23)
    x = torch.randn(6, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(25, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    src_index = torch.randint(0, 6, (25,), generator=gen)
    dst = torch.randint(0, 8, (25,), generator=gen)
    dst = dst.sort().values if sorted_dst else dst
    assert torch.autograd.gradcheck(lambda a, b: ops.gather_mul_scatter(a, b, src_index, dst, 8), (x, w))


@pytest.mark.parametrize("reduce", REDUCTIONS)
def test_opcheck_reductions(reduce):
    gen = torch.Generator().manual_seed(24)
    src = _distinct(12, 3, gen)
    index = torch.randint(0, 4, (12,), generator=gen)
    torch.library.opcheck(native().scatter.default, (src, index, 5, reduce))
    torch.library.opcheck(native().segment_csr.default, (src, torch.tensor([0, 3, 3, 12]), reduce))


def test_opcheck_gather_mul_scatter():
    gen = torch.Generator().manual_seed(25)
    x = torch.randn(5, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(9, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    args = (x, w, torch.randint(0, 5, (9,), generator=gen), torch.randint(0, 4, (9,), generator=gen), 4)
    torch.library.opcheck(native().gather_mul_scatter.default, args)


# ---------------------------------------------------------------------------------------------
# errors: clear messages, never memory corruption
# ---------------------------------------------------------------------------------------------
def test_out_of_range_index_names_the_value():
    src = torch.ones(5, 2)
    with pytest.raises(RuntimeError, match=r"index\[3\] = 99 is out of range.*dim_size = 4"):
        native().scatter(src, torch.tensor([0, 1, 2, 99, 0]), 4, "sum")
    with pytest.raises(RuntimeError, match=r"index\[1\] = -1 is out of range"):
        ops.scatter(src, torch.tensor([0, -1, 2, 3, 0]), 4, "max")
    with pytest.raises(RuntimeError, match=r"dst_index\[0\] = 7 is out of range"):
        native().gather_mul_scatter(
            src, src, torch.zeros(5, dtype=torch.long), torch.tensor([7, 0, 0, 0, 0]), 4
        )
    with pytest.raises(RuntimeError, match=r"src_index\[4\] = 5 is out of range.*x.size\(0\) = 5"):
        native().gather_mul_scatter(
            src, src, torch.tensor([0, 1, 2, 3, 5]), torch.zeros(5, dtype=torch.long), 4
        )


def test_bad_index_dtype_and_lengths():
    src = torch.ones(5, 2)
    with pytest.raises(ValueError, match="index must be a 1-d int64"):
        ops.scatter(src, torch.zeros(5, dtype=torch.int32), 4)
    with pytest.raises(RuntimeError, match="index must be int64"):
        native().scatter(src, torch.zeros(5, dtype=torch.int32), 4, "sum")
    with pytest.raises(ValueError, match="index has 4 entries but src has 5 rows"):
        ops.scatter(src, torch.zeros(4, dtype=torch.long), 4)
    with pytest.raises(RuntimeError, match="index has 4 entries but src has 5 rows"):
        native().scatter(src, torch.zeros(4, dtype=torch.long), 4, "sum")
    with pytest.raises(RuntimeError, match="must have one entry per row of w"):
        native().gather_mul_scatter(
            src, src, torch.zeros(4, dtype=torch.long), torch.zeros(5, dtype=torch.long), 4
        )


def test_bad_ptr():
    src = torch.ones(5, 2)
    with pytest.raises(RuntimeError, match="ptr must end at src.size\\(0\\) = 5"):
        native().segment_csr(src, torch.tensor([0, 2, 4]), "sum")
    with pytest.raises(RuntimeError, match=r"non-decreasing, got ptr\[1\] = 3 > ptr\[2\] = 2"):
        native().segment_csr(src, torch.tensor([0, 3, 2, 5]), "sum")
    with pytest.raises(RuntimeError, match="ptr must start at 0"):
        native().segment_csr(src, torch.tensor([1, 5]), "sum")


def test_unknown_reduce():
    src, index = torch.ones(3, 2), torch.zeros(3, dtype=torch.long)
    with pytest.raises(ValueError, match="reduce must be one of"):
        ops.scatter(src, index, 2, "min")
    with pytest.raises(RuntimeError, match="reduce must be one of 'sum', 'mean', 'max', got 'min'"):
        native().scatter(src, index, 2, "min")
    with pytest.raises(RuntimeError, match="reduce must be one of"):
        native().segment_csr(src, torch.tensor([0, 3]), "prod")
