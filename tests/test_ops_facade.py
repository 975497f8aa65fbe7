"""Bad input through the public facade gives clear errors, on both backends."""

import re

import pytest
import torch

import crysbench.ops as ops
from crysbench.synthetic import random_batch


@pytest.fixture(params=["native", "ref"])
def backend(request, monkeypatch):
    monkeypatch.setenv("CRYSBENCH_OPS", request.param)
    return request.param


def _batch():
    return random_batch(2, atoms=(2, 4), seed=1)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda p, c, b, r, k: (p, c, b, r, -1.0), "cutoff must be a finite number > 0"),
        (lambda p, c, b, r, k: (p, c, b, r, float("nan")), "cutoff must be a finite number > 0"),
        (lambda p, c, b, r, k: (p.float(), c, b, r, k), "must have the dtype of positions"),
        (lambda p, c, b, r, k: (p.long(), c.long(), b, r, k), "positions must be float32 or float64"),
        (lambda p, c, b, r, k: (p, c, b, r[:-1], k), "ptr must have B + 1"),
        (lambda p, c, b, r, k: (p, c, b.int(), r, k), "pbc must be a bool tensor"),
        (lambda p, c, b, r, k: (p[:, :2], c, b, r, k), "positions must have shape [N, 3]"),
        (lambda p, c, b, r, k: (p, c * torch.tensor([1.0, 1.0, 0.0]).view(1, 3, 1).double(), b, r, k),
         "is singular"),
        (lambda p, c, b, r, k: (p.index_fill(0, torch.tensor([2]), float("nan")), c, b, r, k),
         "atom 2 is"),
        (lambda p, c, b, r, k: (p, c, b, r + 1, k), "ptr must rise from 0"),
    ],
)
def test_neighbor_list_bad_input(backend, mutate, message):
    p, c, b, r = _batch()
    args = mutate(p, c, b, r, 3.0)
    with pytest.raises(ValueError, match=re.escape(message)):
        ops.neighbor_list(*args)


def test_scatter_bad_input(backend):
    src = torch.randn(5, 2)
    with pytest.raises(ValueError, match="reduce must be one of"):
        ops.scatter(src, torch.zeros(5, dtype=torch.long), 3, "min")
    with pytest.raises(ValueError, match="index has 4 entries but src has 5 rows"):
        ops.scatter(src, torch.zeros(4, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="index must be a 1-d int64"):
        ops.scatter(src, torch.zeros(5, dtype=torch.int32), 3)
    with pytest.raises(ValueError, match="ptr must end at"):
        ops.segment_csr(src, torch.tensor([0, 2, 4]))


def test_triplets_requires_sorted_edges(backend):
    with pytest.raises(ValueError, match="edge_i must be sorted"):
        ops.triplets(torch.tensor([1, 0]), torch.randn(2, 3), 2)


def test_unknown_backend(monkeypatch):
    monkeypatch.setenv("CRYSBENCH_OPS", "fast")
    with pytest.raises(ValueError, match="CRYSBENCH_OPS must be"):
        ops.scatter(torch.randn(2, 1), torch.zeros(2, dtype=torch.long), 1)


def test_build_info_names_torch():
    info = ops.build_info()
    assert info["torch"] == torch.__version__
    assert info["with_cuda"] in (True, False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a CPU-only build")
def test_cuda_tensor_on_cpu_build_is_refused(monkeypatch):
    from crysbench.ops import _native

    monkeypatch.setattr(_native, "load", lambda: {"with_cuda": False, "torch": "x", "torch_cuda": "none"})

    class FakeCuda:
        is_cuda = True

    with pytest.raises(RuntimeError, match="no CUDA kernels"):
        _native.require_device("scatter", FakeCuda())
