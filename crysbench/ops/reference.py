"""Pure-torch definition of every crysbench op: the specification the native kernels must match.

Readable and differentiable rather than fast. Conventions shared by all ops:

* A batch of crystals is a concatenation: ``positions`` [N, 3] in Å, ``cells`` [B, 3, 3] with the
  lattice vectors as rows (Å), ``pbc`` [B, 3] bool, and ``ptr`` [B + 1] int64 atom offsets
  (crystal b owns atoms ``ptr[b]:ptr[b+1]``).
* Edges are directed i → j with an integer cell shift S (in units of the lattice vectors):
  ``vector = positions[j] + S @ cell - positions[i]``; the list is *full* (both directions) and
  includes an atom's bonds to its own periodic images (i == j, S != 0). The pair (i, i, 0) is not
  an edge. A pair is an edge when its distance is strictly below the cutoff.
* Edge lists come sorted by ``edge_i`` (a CSR layout), which ``triplets`` relies on.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor

REDUCTIONS = ("sum", "mean", "max")


# --------------------------------------------------------------------------------------------
# neighbour list
# --------------------------------------------------------------------------------------------
def _shift_range(cell: Tensor, frac: Tensor, pbc: Tensor, cutoff: float) -> list[int]:
    """Per-axis number of images to search so no pair within ``cutoff`` is missed.

    The distance between lattice planes of axis k is 1/|b_k| (b = reciprocal rows); atoms may lie
    outside the cell, so the spread of their fractional coordinates is added.
    """
    recip = torch.linalg.inv(cell).T  # rows b_k with a_i . b_k = delta_ik
    reach = []
    for k in range(3):
        if not bool(pbc[k]):
            reach.append(0)
            continue
        spread = float(frac[:, k].max() - frac[:, k].min()) if frac.numel() else 0.0
        reach.append(math.ceil(cutoff * float(recip[k].norm()) + spread))
    return reach


def neighbor_list_one(positions: Tensor, cell: Tensor, pbc: Tensor, cutoff: float):
    """Brute-force full neighbour list of one crystal: (i, j, shifts, distances, vectors), local ids."""
    n = positions.shape[0]
    frac = positions @ torch.linalg.inv(cell) if n else positions
    ranges = _shift_range(cell, frac, pbc, cutoff)
    shifts = torch.tensor(
        list(itertools.product(*[range(-r, r + 1) for r in ranges])), dtype=torch.long
    )  # [S, 3]
    offsets = shifts.to(positions.dtype) @ cell  # [S, 3]
    # vec[s, i, j] = pos[j] + offset[s] - pos[i]
    vec = positions[None, None, :, :] + offsets[:, None, None, :] - positions[None, :, None, :]
    dist = vec.norm(dim=-1)
    keep = dist < cutoff
    zero = (shifts == 0).all(dim=1)
    keep[zero] &= ~torch.eye(n, dtype=torch.bool)
    s_idx, i_idx, j_idx = keep.nonzero(as_tuple=True)
    order = torch.argsort(i_idx * (n * len(shifts)) + j_idx * len(shifts) + s_idx, stable=True)
    s_idx, i_idx, j_idx = s_idx[order], i_idx[order], j_idx[order]
    return i_idx, j_idx, shifts[s_idx], dist[s_idx, i_idx, j_idx], vec[s_idx, i_idx, j_idx]


def neighbor_list(
    positions: Tensor, cells: Tensor, pbc: Tensor, ptr: Tensor, cutoff: float, return_vectors: bool = True
):
    """Full periodic neighbour list of a batch of crystals.

    Returns ``edge_i, edge_j`` [E] int64 (global atom ids, sorted by edge_i), ``shifts`` [E, 3] int64,
    ``distances`` [E] (Å) and ``vectors`` [E, 3] (Å; shape [0, 3] when ``return_vectors`` is False).
    """
    parts = []
    for b in range(cells.shape[0]):
        lo, hi = int(ptr[b]), int(ptr[b + 1])
        i, j, s, d, v = neighbor_list_one(positions[lo:hi], cells[b], pbc[b], cutoff)
        parts.append((i + lo, j + lo, s, d, v))
    if not parts:
        parts = [(torch.zeros(0, dtype=torch.long),) * 2 + (torch.zeros(0, 3, dtype=torch.long),)
                 + (positions.new_zeros(0), positions.new_zeros(0, 3))]
    edge_i, edge_j, shifts, dist, vec = (torch.cat(x) for x in zip(*parts))
    if not return_vectors:
        vec = positions.new_zeros(0, 3)
    return edge_i, edge_j, shifts, dist, vec


def knn_cap(edge_i: Tensor, distances: Tensor, num_atoms: int, k: int, tol: float = 1e-8):
    """Keep, per centre atom, its ``k`` nearest edges plus every edge tied with the k-th.

    CGCNN/ALIGNN semantics: an edge of atom i is kept when its distance is <= d_k(i) + tol, where
    d_k(i) is the k-th smallest distance of atom i (all edges kept when i has fewer than k).
    Returns ``keep`` (ascending indices into the edge list) and ``counts`` [num_atoms], the number
    of edges each atom had *before* the cap, so callers can report atoms with fewer than k.
    """
    counts = torch.bincount(edge_i, minlength=num_atoms)
    keep = torch.zeros(edge_i.shape[0], dtype=torch.bool)
    for a in range(num_atoms):
        idx = (edge_i == a).nonzero(as_tuple=True)[0]
        if idx.numel() <= k:
            keep[idx] = True
            continue
        kth = torch.sort(distances[idx]).values[k - 1]
        keep[idx[distances[idx] <= kth + tol]] = True
    return keep.nonzero(as_tuple=True)[0], counts


# --------------------------------------------------------------------------------------------
# line graph (ALIGNN triplets)
# --------------------------------------------------------------------------------------------
def triplets(edge_i: Tensor, vectors: Tensor, num_atoms: int):
    """All ordered pairs (a, b), a != b, of edges that share their centre atom ``edge_i``.

    Ordered by centre, then a, then b. ``cos`` is the cosine of the bond angle between
    ``vectors[a]`` and ``vectors[b]`` (both pointing away from the centre), clamped to [-1, 1].
    ``edge_i`` must be sorted (non-decreasing).
    """
    counts = torch.bincount(edge_i, minlength=num_atoms)
    ptr = torch.zeros(num_atoms + 1, dtype=torch.long)
    ptr[1:] = torch.cumsum(counts, 0)
    ea, eb = [], []
    for c in range(num_atoms):
        lo, hi = int(ptr[c]), int(ptr[c + 1])
        e = torch.arange(lo, hi)
        a, b = torch.meshgrid(e, e, indexing="ij")
        off = a != b
        ea.append(a[off])
        eb.append(b[off])
    edge_a = torch.cat(ea) if ea else torch.zeros(0, dtype=torch.long)
    edge_b = torch.cat(eb) if eb else torch.zeros(0, dtype=torch.long)
    va, vb = vectors[edge_a], vectors[edge_b]
    cos = (va * vb).sum(-1) / (va.norm(dim=-1) * vb.norm(dim=-1))
    return edge_a, edge_b, cos.clamp(-1.0, 1.0)


# --------------------------------------------------------------------------------------------
# segment / scatter reductions
# --------------------------------------------------------------------------------------------
def scatter(src: Tensor, index: Tensor, dim_size: int, reduce: str = "sum"):
    """Reduce rows of ``src`` [E, F] into ``dim_size`` rows by ``index`` [E].

    sum / mean / max; empty rows give 0. For max, ``arg`` [dim_size, F] holds the smallest edge
    index that attains the maximum (``E`` for an empty row); for sum and mean ``arg`` is empty.
    """
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")
    feat = src.shape[1:]
    out = src.new_zeros((dim_size, *feat))
    arg = torch.zeros(0, dtype=torch.long)
    if reduce in ("sum", "mean"):
        out = out.index_add(0, index, src)
        if reduce == "mean":
            cnt = torch.bincount(index, minlength=dim_size).clamp_min(1).to(src.dtype)
            out = out / cnt.view(-1, *([1] * len(feat)))
        return out, arg
    idx = index.view(-1, *([1] * len(feat))).expand_as(src)
    out = out.scatter_reduce(0, idx, src, reduce="amax", include_self=False)
    e = src.shape[0]
    pos = torch.arange(e).view(-1, *([1] * len(feat))).expand_as(src)
    hit = src == out.gather(0, idx)
    cand = torch.where(hit, pos, torch.full_like(pos, e))
    arg = torch.full((dim_size, *feat), e, dtype=torch.long).scatter_reduce(
        0, idx, cand, reduce="amin", include_self=True
    )
    return out, arg


def ptr_to_index(ptr: Tensor) -> Tensor:
    """CSR pointer [N + 1] → segment id of each row [ptr[-1]]."""
    return torch.repeat_interleave(torch.arange(ptr.numel() - 1), ptr.diff())


def segment_csr(src: Tensor, ptr: Tensor, reduce: str = "sum"):
    """Reduce contiguous row segments ``src[ptr[n]:ptr[n+1]]``; same outputs as :func:`scatter`."""
    return scatter(src, ptr_to_index(ptr), ptr.numel() - 1, reduce)


def gather_mul_scatter(x: Tensor, w: Tensor, src_index: Tensor, dst_index: Tensor, dim_size: int) -> Tensor:
    """out[dst[e]] += x[src[e]] * w[e]: the message-passing step of an edge-gated convolution."""
    return x.new_zeros((dim_size, *x.shape[1:])).index_add(0, dst_index, x[src_index] * w)
