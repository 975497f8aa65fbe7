"""ALIGNN (Choudhary & DeCost, npj Comput. Mater. 2021): edge-gated convolutions on the atom graph
and on its line graph, whose nodes are bonds and whose edges are bond pairs carrying the angle.

``model.alignn_layers`` (3-body: line-graph conv updating bonds and angles, then atom-graph conv)
and ``model.gcn_layers`` (2-body: atom-graph conv only) are separate ModuleLists so ablations and
transfer experiments can address them. The last convolution of the stack does not update the
features nothing reads afterwards, so every parameter receives a gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from crysbench import ops
from crysbench.graph import GraphBatch, triplet_cosines, with_line_graph
from crysbench.models import register
from crysbench.models._common import AtomEmbedding, CrystalModel, GaussianBasis, ModelConfig


@dataclass(frozen=True)
class ALIGNNConfig(ModelConfig):
    """depth = number of ALIGNN (3-body) layers; gcn_depth = number of plain (2-body) layers after them."""

    width: int = 64
    depth: int = 2
    gcn_depth: int = 2
    n_rbf: int = 80  # bond-length Gaussians on [0, rbf_max] Å
    rbf_max: float = 8.0
    n_angle_rbf: int = 40  # bond-angle-cosine Gaussians on [-1, 1]


class EdgeGatedConv(nn.Module):
    """Edge-gated graph convolution (Bresson & Laurent; ALIGNN's variant with normalised gates).

    m_ij = A h_i + B h_j + C e_ij;  h_i ← h_i + SiLU(BN(U h_i + Σ_j σ(m_ij) ⊙ V h_j / (Σ_j σ(m_ij) + ε)));
    e_ij ← e_ij + SiLU(BN(m_ij)) when ``update_edges``. Messages flow j → i (``dst`` collects).
    """

    def __init__(self, width: int, update_edges: bool = True) -> None:
        super().__init__()
        self.gate_dst, self.gate_src, self.gate_edge = (nn.Linear(width, width) for _ in range(3))
        self.self_update, self.neighbor_update = nn.Linear(width, width), nn.Linear(width, width)
        self.bn_nodes = nn.BatchNorm1d(width)
        self.bn_edges = nn.BatchNorm1d(width) if update_edges else None

    def forward(self, h: Tensor, e: Tensor, dst: Tensor, src: Tensor) -> tuple[Tensor, Tensor | None]:
        m = self.gate_dst(h)[dst] + self.gate_src(h)[src] + self.gate_edge(e)
        sigma = torch.sigmoid(m)
        n = h.shape[0]
        weighted = ops.gather_mul_scatter(self.neighbor_update(h), sigma, src, dst, n)
        norm = ops.scatter(sigma, dst, n, "sum")
        h = h + F.silu(self.bn_nodes(self.self_update(h) + weighted / (norm + 1e-6)))
        e = e + F.silu(self.bn_edges(m)) if self.bn_edges is not None else None
        return h, e


class ALIGNNLayer(nn.Module):
    """Line-graph conv (bonds ← angles), then atom-graph conv (atoms ← bonds)."""

    def __init__(self, width: int, update_angles: bool, update_bonds: bool) -> None:
        super().__init__()
        self.line_conv = EdgeGatedConv(width, update_edges=update_angles)
        self.atom_conv = EdgeGatedConv(width, update_edges=update_bonds)

    def forward(self, h: Tensor, e: Tensor, t: Tensor, batch: GraphBatch):
        e, t = self.line_conv(e, t, batch.edge_a, batch.edge_b)
        h, e = self.atom_conv(h, e, batch.edge_i, batch.edge_j)
        return h, e, t


def _embedding(n_in: int, width: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, width), nn.BatchNorm1d(width), nn.SiLU())


@register("alignn")
class ALIGNN(CrystalModel):
    Config = ALIGNNConfig

    def __init__(self, config: ALIGNNConfig) -> None:
        super().__init__(config)
        w = config.width
        self.embed = AtomEmbedding(w)
        self.bond_rbf = GaussianBasis(0.0, config.rbf_max, config.n_rbf)
        self.angle_rbf = GaussianBasis(-1.0, 1.0, config.n_angle_rbf)
        self.bond_embed = _embedding(config.n_rbf, w)
        self.angle_embed = _embedding(config.n_angle_rbf, w)
        n_alignn, n_gcn = config.depth, config.gcn_depth
        self.alignn_layers = nn.ModuleList(
            ALIGNNLayer(w, update_angles=k < n_alignn - 1, update_bonds=k < n_alignn - 1 or n_gcn > 0)
            for k in range(n_alignn))
        self.gcn_layers = nn.ModuleList(EdgeGatedConv(w, update_edges=k < n_gcn - 1) for k in range(n_gcn))
        self.out = nn.Linear(w, config.n_targets)

    def node_embeddings(self, batch: GraphBatch) -> Tensor:
        vectors = self.edge_vectors(batch)
        if self.alignn_layers:  # a store ingested without triplets: build the line graph here
            batch = with_line_graph(batch, vectors)
        h = self.embed(batch.numbers)
        e = self.bond_embed(self.bond_rbf(vectors.norm(dim=1)))
        t = self.angle_embed(self.angle_rbf(triplet_cosines(batch, vectors))) if self.alignn_layers else None
        for layer in self.alignn_layers:
            h, e, t = layer(h, e, t, batch)
        for conv in self.gcn_layers:
            h, e = conv(h, e, batch.edge_i, batch.edge_j)
        return h

    def head(self, pooled: Tensor) -> Tensor:
        return self.out(pooled)

    @classmethod
    def size_ladder(cls, n_targets: int = 1) -> dict[str, ALIGNNConfig]:
        rungs = {"xxs": (8, 1, 1), "xs": (20, 1, 1), "s": (32, 2, 1), "m": (56, 2, 2), "l": (96, 3, 2),
                 "xl": (144, 4, 4)}
        return {k: ALIGNNConfig(n_targets=n_targets, width=w, depth=d, gcn_depth=g)
                for k, (w, d, g) in rungs.items()}
