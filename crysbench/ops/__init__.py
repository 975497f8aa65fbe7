"""The ops models and the data pipeline call: native kernels by default, the pure-torch reference
when ``CRYSBENCH_OPS=ref`` is set (read at each call, never at import).

Every entry point validates its inputs once here, with messages that say what was wrong and what
was expected, so the native and reference paths fail identically on bad input.
"""

from __future__ import annotations

import math
import os

import torch
from torch import Tensor

from crysbench.ops import reference
from crysbench.ops._native import NativeBuildError, load, require_device

__all__ = [
    "NativeBuildError",
    "backend",
    "build_info",
    "gather_mul_scatter",
    "knn_cap",
    "neighbor_list",
    "scatter",
    "segment_csr",
    "triplets",
]


def backend() -> str:
    """'native' (default) or 'ref', from the CRYSBENCH_OPS environment variable."""
    value = os.environ.get("CRYSBENCH_OPS", "native").lower()
    if value not in ("native", "ref"):
        raise ValueError(f"CRYSBENCH_OPS must be 'native' or 'ref', got {value!r}")
    return value


def build_info() -> dict:
    """What the native extension was built against (torch, CUDA, compiler)."""
    return load()


def _lib():
    load()
    from crysbench.ops import _register

    _register.register()
    return torch.ops.crysbench


def _fail(op: str, msg: str) -> None:
    raise ValueError(f"crysbench.{op}: {msg}")


def _check_index(op: str, name: str, t: Tensor, dims: int = 1) -> None:
    if t.dtype != torch.long or t.dim() != dims:
        _fail(op, f"{name} must be a {dims}-d int64 tensor, got {t.dtype} with shape {tuple(t.shape)}")


def _check_batch(positions: Tensor, cells: Tensor, pbc: Tensor, ptr: Tensor, cutoff: float) -> None:
    op = "neighbor_list"
    if not (isinstance(cutoff, (int, float)) and math.isfinite(cutoff) and cutoff > 0):
        _fail(op, f"cutoff must be a finite number > 0 Å, got {cutoff!r}")
    if positions.dtype not in (torch.float32, torch.float64):
        _fail(op, f"positions must be float32 or float64, got {positions.dtype}")
    if positions.dim() != 2 or positions.shape[1] != 3:
        _fail(op, f"positions must have shape [N, 3], got {tuple(positions.shape)}")
    if cells.dim() != 3 or cells.shape[1:] != (3, 3):
        _fail(op, f"cells must have shape [B, 3, 3], got {tuple(cells.shape)}")
    if cells.dtype != positions.dtype:
        _fail(op, f"cells ({cells.dtype}) must have the dtype of positions ({positions.dtype})")
    if pbc.dtype != torch.bool or pbc.shape != (cells.shape[0], 3):
        _fail(op, f"pbc must be a bool tensor of shape [{cells.shape[0]}, 3], got {pbc.dtype} "
                  f"{tuple(pbc.shape)}")
    _check_index(op, "ptr", ptr)
    if ptr.numel() != cells.shape[0] + 1:
        _fail(op, f"ptr must have B + 1 = {cells.shape[0] + 1} entries, got {ptr.numel()}")
    devices = {t.device for t in (positions, cells, pbc, ptr)}
    if len(devices) > 1:
        _fail(op, f"all inputs must be on one device, got {sorted(map(str, devices))}")
    if ptr.numel() and (int(ptr[0]) != 0 or int(ptr[-1]) != positions.shape[0] or bool((ptr.diff() < 0).any())):
        _fail(op, f"ptr must rise from 0 to N = {positions.shape[0]}, got {ptr.tolist()[:8]}...")
    if not bool(torch.isfinite(positions).all()):
        bad = int((~torch.isfinite(positions)).any(dim=1).nonzero()[0])
        _fail(op, f"positions must be finite; atom {bad} is {positions[bad].tolist()}")
    if not bool(torch.isfinite(cells).all()):
        _fail(op, "cells must be finite")
    if cells.shape[0]:
        det = torch.linalg.det(cells.double()).abs()
        scale = cells.double().norm(dim=2).prod(dim=1).clamp_min(1e-300)
        bad = (det / scale < 1e-8).nonzero()
        if bad.numel():
            b = int(bad[0])
            _fail(op, f"cell of crystal {b} is singular (|det| = {float(det[b]):.3g} Å^3): "
                      f"{cells[b].tolist()}")


def neighbor_list(positions: Tensor, cells: Tensor, pbc: Tensor, ptr: Tensor, cutoff: float,
                  return_vectors: bool = True):
    """Full periodic neighbour list of a batch of crystals (see :func:`reference.neighbor_list`).

    positions [N, 3] Å; cells [B, 3, 3] Å (rows are lattice vectors); pbc [B, 3] bool;
    ptr [B + 1] int64 atom offsets; cutoff in Å. Returns edge_i, edge_j [E] (sorted by edge_i),
    shifts [E, 3] int64, distances [E] Å, vectors [E, 3] Å (pos[j] + shift @ cell - pos[i]).
    """
    _check_batch(positions, cells, pbc, ptr, cutoff)
    if backend() == "ref":
        return reference.neighbor_list(positions, cells, pbc, ptr, float(cutoff), return_vectors)
    require_device("neighbor_list", positions)
    return _lib().neighbor_list(positions.contiguous(), cells.contiguous(), pbc.contiguous(),
                                   ptr.contiguous(), float(cutoff), return_vectors)


def knn_cap(edge_i: Tensor, distances: Tensor, num_atoms: int, k: int, tol: float = 1e-8):
    """Indices of the edges kept by a k-nearest cap (ties at the k-th distance kept) and the
    per-atom edge counts before the cap; see :func:`reference.knn_cap`."""
    _check_index("knn_cap", "edge_i", edge_i)
    if distances.shape != edge_i.shape:
        _fail("knn_cap", f"distances {tuple(distances.shape)} must match edge_i {tuple(edge_i.shape)}")
    if k < 1:
        _fail("knn_cap", f"k must be >= 1, got {k}")
    if backend() == "ref":
        return reference.knn_cap(edge_i, distances, num_atoms, k, tol)
    require_device("knn_cap", edge_i)
    return _lib().knn_cap(edge_i.contiguous(), distances.contiguous(), num_atoms, k, tol)


def triplets(edge_i: Tensor, vectors: Tensor, num_atoms: int):
    """Line graph: ordered pairs of edges sharing a centre atom, with the bond-angle cosine.

    edge_i [E] sorted; vectors [E, 3]. Returns edge_a, edge_b [T] int64 and cos [T].
    """
    _check_index("triplets", "edge_i", edge_i)
    if vectors.shape != (edge_i.shape[0], 3):
        _fail("triplets", f"vectors must have shape [{edge_i.shape[0]}, 3], got {tuple(vectors.shape)}")
    if edge_i.numel() > 1 and bool((edge_i.diff() < 0).any()):
        _fail("triplets", "edge_i must be sorted (non-decreasing), as neighbor_list returns it")
    if backend() == "ref":
        return reference.triplets(edge_i, vectors, num_atoms)
    require_device("triplets", edge_i, vectors)
    return _lib().triplets(edge_i.contiguous(), vectors.contiguous(), num_atoms)


def _check_reduce(op: str, src: Tensor, reduce: str) -> None:
    if reduce not in reference.REDUCTIONS:
        _fail(op, f"reduce must be one of {reference.REDUCTIONS}, got {reduce!r}")
    if not src.is_floating_point():
        _fail(op, f"src must be a floating-point tensor, got {src.dtype}")


def scatter(src: Tensor, index: Tensor, dim_size: int, reduce: str = "sum") -> Tensor:
    """Reduce rows of ``src`` [E, ...] into ``dim_size`` rows by ``index`` [E] (sum/mean/max;
    empty rows are 0). Differentiable in ``src``."""
    _check_reduce("scatter", src, reduce)
    _check_index("scatter", "index", index)
    if index.shape[0] != src.shape[0]:
        _fail("scatter", f"index has {index.shape[0]} entries but src has {src.shape[0]} rows")
    if backend() == "ref":
        return reference.scatter(src, index, dim_size, reduce)[0]
    require_device("scatter", src, index)
    flat = src.reshape(src.shape[0], math.prod(src.shape[1:]))  # -1 fails when E = 0
    out = _lib().scatter(flat.contiguous(), index.contiguous(), dim_size, reduce)[0]
    return out.view(dim_size, *src.shape[1:])


def segment_csr(src: Tensor, ptr: Tensor, reduce: str = "sum") -> Tensor:
    """Reduce contiguous segments ``src[ptr[n]:ptr[n+1]]`` (sum/mean/max). Differentiable in ``src``."""
    _check_reduce("segment_csr", src, reduce)
    _check_index("segment_csr", "ptr", ptr)
    if ptr.numel() < 1 or (src.shape[0] and int(ptr[-1]) != src.shape[0]):
        _fail("segment_csr", f"ptr must end at src.shape[0] = {src.shape[0]}")
    if backend() == "ref":
        return reference.segment_csr(src, ptr, reduce)[0]
    require_device("segment_csr", src, ptr)
    flat = src.reshape(src.shape[0], math.prod(src.shape[1:]))  # -1 fails when E = 0
    out = _lib().segment_csr(flat.contiguous(), ptr.contiguous(), reduce)[0]
    return out.view(ptr.numel() - 1, *src.shape[1:])


def gather_mul_scatter(x: Tensor, w: Tensor, src_index: Tensor, dst_index: Tensor, dim_size: int) -> Tensor:
    """Fused message passing: out[dst[e]] += x[src[e]] * w[e]; x [N, F], w [E, F]."""
    _check_index("gather_mul_scatter", "src_index", src_index)
    _check_index("gather_mul_scatter", "dst_index", dst_index)
    if w.shape[0] != src_index.shape[0] or dst_index.shape != src_index.shape or w.shape[1:] != x.shape[1:]:
        _fail("gather_mul_scatter", f"shapes disagree: x {tuple(x.shape)}, w {tuple(w.shape)}, "
                                    f"src_index {tuple(src_index.shape)}, dst_index {tuple(dst_index.shape)}")
    if backend() == "ref":
        return reference.gather_mul_scatter(x, w, src_index, dst_index, dim_size)
    require_device("gather_mul_scatter", x, w)
    return _lib().gather_mul_scatter(x.contiguous(), w.contiguous(), src_index.contiguous(),
                                        dst_index.contiguous(), dim_size)
