"""Batched crystal graphs: the one structure every model takes.

A :class:`GraphBatch` is a block-diagonal batch of periodic crystals. Geometry stays in the batch
(positions, cells, integer cell shifts) and edge vectors are recomputed in torch by
:func:`edge_vectors`, so models are differentiable in positions and cells and see every periodic
image as its own edge.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from crysbench import ops


@dataclass(frozen=True)
class GraphBatch:
    """B crystals, N atoms, E directed edges i → j (sorted by ``edge_i``), T line-graph edges.

    numbers [N] int64 atomic numbers; positions [N, 3] Å; cells [B, 3, 3] Å (rows are lattice
    vectors); pbc [B, 3] bool; ptr [B + 1] atom offsets; batch [N] crystal id of each atom;
    edge_i, edge_j [E] global atom ids; shifts [E, 3] int64 cell shifts of atom j;
    edge_a, edge_b [T] edge ids sharing a centre atom (line graph, optional);
    targets [B, P] and mask [B, P] bool (optional; masked-out targets hold 0, never NaN).
    """

    numbers: Tensor
    positions: Tensor
    cells: Tensor
    pbc: Tensor
    ptr: Tensor
    batch: Tensor
    edge_i: Tensor
    edge_j: Tensor
    shifts: Tensor
    edge_a: Tensor | None = None
    edge_b: Tensor | None = None
    targets: Tensor | None = None
    mask: Tensor | None = None

    @property
    def num_crystals(self) -> int:
        return self.cells.shape[0]

    @property
    def num_atoms(self) -> int:
        return self.numbers.shape[0]

    @property
    def num_edges(self) -> int:
        return self.edge_i.shape[0]

    @property
    def has_line_graph(self) -> bool:
        return self.edge_a is not None

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> GraphBatch:
        """Move every tensor to ``device``; ``dtype`` casts the float geometry (positions, cells)."""
        moved = {}
        for field in dataclasses.fields(self):
            t = getattr(self, field.name)
            if t is not None:
                cast = dtype if dtype is not None and field.name in ("positions", "cells") else None
                t = t.to(device=device, dtype=cast)
            moved[field.name] = t
        return GraphBatch(**moved)

    def edge_ptr(self) -> Tensor:
        """CSR offsets [N + 1] of each atom's outgoing edges (valid because edges are sorted)."""
        counts = torch.bincount(self.edge_i, minlength=self.num_atoms)
        return torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])


def edge_vectors(batch: GraphBatch) -> Tensor:
    """Edge vectors [E, 3] Å: positions[j] + shifts @ cells[crystal of i] − positions[i].

    Computed in torch, so gradients reach positions and cells; moving an atom by a lattice vector
    and rebuilding the graph only changes ``shifts``, never these vectors.
    """
    cell = batch.cells[batch.batch[batch.edge_i]]  # [E, 3, 3]
    offset = torch.einsum("ek,ekl->el", batch.shifts.to(batch.positions.dtype), cell)
    return batch.positions[batch.edge_j] + offset - batch.positions[batch.edge_i]


def triplet_cosines(batch: GraphBatch, vectors: Tensor) -> Tensor:
    """Cosine [T] of the bond angle between edges ``edge_a`` and ``edge_b`` (both leave the centre)."""
    if batch.edge_a is None or batch.edge_b is None:
        raise ValueError("triplet_cosines: this GraphBatch has no line graph; build it with line_graph=True")
    va, vb = vectors[batch.edge_a], vectors[batch.edge_b]
    cos = (va * vb).sum(-1) / (va.norm(dim=-1) * vb.norm(dim=-1))
    return cos.clamp(-1.0, 1.0)


def with_line_graph(batch: GraphBatch, vectors: Tensor | None = None) -> GraphBatch:
    """``batch`` with its line graph (edge_a, edge_b) built by ``ops.triplets`` when it has none, e.g.
    batches of a store ingested without triplets; ``vectors`` [E, 3] are its edge vectors if at hand."""
    if batch.has_line_graph:
        return batch
    vectors = edge_vectors(batch) if vectors is None else vectors
    edge_a, edge_b, _ = ops.triplets(batch.edge_i, vectors.detach(), batch.num_atoms)
    return dataclasses.replace(batch, edge_a=edge_a, edge_b=edge_b)


def _as_tensor(x, dtype: torch.dtype) -> Tensor:
    return x.to(dtype) if isinstance(x, Tensor) else torch.as_tensor(x, dtype=dtype)


def _cat(parts: list[Tensor], empty: Tensor) -> Tensor:
    return torch.cat(parts) if parts else empty


def _stack_inputs(numbers_list, positions_list, cells_list, pbc_list, dtype):
    """Validate per-crystal inputs and concatenate them: numbers, positions, cells, pbc, ptr, batch."""
    n = len(numbers_list)
    if not (len(positions_list) == len(cells_list) == len(pbc_list) == n):
        raise ValueError(f"build_graph: got {n} numbers, {len(positions_list)} positions, "
                         f"{len(cells_list)} cells and {len(pbc_list)} pbc entries; they must match")
    numbers = [_as_tensor(z, torch.long).reshape(-1) for z in numbers_list]
    positions = [_as_tensor(p, dtype).reshape(-1, 3) for p in positions_list]
    for b, (z, p) in enumerate(zip(numbers, positions, strict=True)):
        if z.shape[0] != p.shape[0]:
            raise ValueError(f"build_graph: crystal {b} has {z.shape[0]} numbers but {p.shape[0]} positions")
        if z.numel() and (int(z.min()) < 1 or int(z.max()) > 100):
            raise ValueError(f"build_graph: crystal {b} has atomic numbers outside 1..100: {z.tolist()}")
    cells = [_as_tensor(c, dtype).reshape(1, 3, 3) for c in cells_list]
    pbc = [_as_tensor(p, torch.bool).reshape(1, 3) for p in pbc_list]
    counts = torch.tensor([z.shape[0] for z in numbers], dtype=torch.long)
    ptr = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(counts, 0)])
    return (_cat(numbers, torch.zeros(0, dtype=torch.long)), _cat(positions, torch.zeros(0, 3, dtype=dtype)),
            _cat(cells, torch.zeros(0, 3, 3, dtype=dtype)), _cat(pbc, torch.zeros(0, 3, dtype=torch.bool)),
            ptr, torch.repeat_interleave(torch.arange(n), counts))


def build_graph(numbers_list: Sequence, positions_list: Sequence, cells_list: Sequence, pbc_list: Sequence,
                cutoff: float = 8.0, max_neighbors: int | None = 12, line_graph: bool = False,
                dtype: torch.dtype = torch.float64) -> GraphBatch:
    """Build the periodic graph of a list of crystals with the crysbench ops.

    Edges are all pairs closer than ``cutoff`` Å (every periodic image), then capped to the
    ``max_neighbors`` nearest per atom keeping ties with the k-th (CGCNN/ALIGNN semantics;
    ``None`` keeps all). ``line_graph`` adds ALIGNN triplets (edge pairs sharing a centre atom).
    """
    numbers, positions, cells, pbc, ptr, batch = _stack_inputs(numbers_list, positions_list, cells_list,
                                                               pbc_list, dtype)
    edge_i, edge_j, shifts, dist, vec = ops.neighbor_list(positions, cells, pbc, ptr, cutoff)
    if max_neighbors is not None:
        keep, _ = ops.knn_cap(edge_i, dist, numbers.shape[0], max_neighbors)
        edge_i, edge_j, shifts, vec = edge_i[keep], edge_j[keep], shifts[keep], vec[keep]
    edge_a = edge_b = None
    if line_graph:
        edge_a, edge_b, _ = ops.triplets(edge_i, vec, numbers.shape[0])
    return GraphBatch(numbers=numbers, positions=positions, cells=cells, pbc=pbc, ptr=ptr, batch=batch,
                      edge_i=edge_i, edge_j=edge_j, shifts=shifts, edge_a=edge_a, edge_b=edge_b)


def _cat_optional(graphs: Sequence[GraphBatch], name: str, offsets: Tensor | None = None) -> Tensor | None:
    parts = [getattr(g, name) for g in graphs]
    present = [p is not None for p in parts]
    if not any(present):
        return None
    if not all(present):
        missing = present.index(False)
        raise ValueError(f"collate: graph {missing} has no {name!r} but others do; build all alike")
    if offsets is not None:
        parts = [p + o for p, o in zip(parts, offsets.tolist(), strict=True)]
    return torch.cat(parts)


def collate(graphs: Sequence[GraphBatch]) -> GraphBatch:
    """Concatenate graph batches into one block-diagonal batch, offsetting atom, edge and crystal ids."""
    if not graphs:
        raise ValueError("collate: need at least one GraphBatch")

    def starts(sizes: list[int]) -> Tensor:
        return torch.tensor([0] + sizes[:-1]).cumsum(0)

    atoms = starts([g.num_atoms for g in graphs])
    edges = starts([g.num_edges for g in graphs])
    crystals = starts([g.num_crystals for g in graphs])
    ptr = torch.cat([graphs[0].ptr[:1]] + [g.ptr[1:] + int(a) for g, a in zip(graphs, atoms, strict=True)])
    fields = {name: _cat_optional(graphs, name) for name in
              ("numbers", "positions", "cells", "pbc", "shifts", "targets", "mask")}
    fields.update({name: _cat_optional(graphs, name, offsets) for name, offsets in
                   (("batch", crystals), ("edge_i", atoms), ("edge_j", atoms), ("edge_a", edges),
                    ("edge_b", edges))})
    return GraphBatch(ptr=ptr, **fields)
