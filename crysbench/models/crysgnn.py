"""CrysGNN encoder backbone (Das et al., AAAI 2023) with a property head for fine-tuning.

CrysGNN pre-trains a CGCNN-like encoder on unlabelled crystals (node-feature and connectivity
reconstruction, plus graph-level contrastive terms); this module is the encoder those objectives
attach to. Each layer first updates every bond from its two atoms, e_ij ← e_ij + softplus(BN(W[h_i,
h_j, e_ij])), then updates atoms with the CGCNN gated convolution over the updated bonds.
:meth:`encode` returns node and edge embeddings for pre-training heads (added by the transfer
work); ``forward`` is the mean-pooled property head used when fine-tuning.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from crysbench import ops
from crysbench.graph import GraphBatch
from crysbench.models import register
from crysbench.models._common import AtomEmbedding, CrystalModel, GaussianBasis, ModelConfig


@dataclass(frozen=True)
class CrysGNNConfig(ModelConfig):
    """width = node embedding size; edge_width = bond embedding size; depth = encoder layers."""

    width: int = 64
    depth: int = 5
    edge_width: int = 32
    head_width: int = 128
    rbf_max: float = 8.0  # Å
    rbf_step: float = 0.2  # Å


class EncoderLayer(nn.Module):
    """Bond update from its atoms, then a CGCNN gated atom update over the new bonds."""

    def __init__(self, width: int, edge_width: int) -> None:
        super().__init__()
        self.edge_fc = nn.Linear(2 * width + edge_width, edge_width)
        self.edge_bn = nn.BatchNorm1d(edge_width)
        self.node_fc = nn.Linear(2 * width + edge_width, 2 * width)
        self.node_bn_edge, self.node_bn = nn.BatchNorm1d(2 * width), nn.BatchNorm1d(width)

    def forward(self, h: Tensor, e: Tensor, batch: GraphBatch, edge_ptr: Tensor) -> tuple[Tensor, Tensor]:
        hi, hj = h[batch.edge_i], h[batch.edge_j]
        e = e + F.softplus(self.edge_bn(self.edge_fc(torch.cat([hi, hj, e], dim=1))))
        gate, core = self.node_bn_edge(self.node_fc(torch.cat([hi, hj, e], dim=1))).chunk(2, dim=1)
        summed = ops.segment_csr(torch.sigmoid(gate) * F.softplus(core), edge_ptr, "sum")
        return F.softplus(h + self.node_bn(summed)), e


@register("crysgnn")
class CrysGNN(CrystalModel):
    Config = CrysGNNConfig

    def __init__(self, config: CrysGNNConfig) -> None:
        super().__init__(config)
        n_rbf = round(config.rbf_max / config.rbf_step) + 1
        self.rbf = GaussianBasis(0.0, config.rbf_max, n_rbf, width=config.rbf_step)
        self.embed = AtomEmbedding(config.width)
        self.edge_embed = nn.Linear(n_rbf, config.edge_width)
        self.layers = nn.ModuleList(EncoderLayer(config.width, config.edge_width)
                                    for _ in range(config.depth))
        self.hidden = nn.Linear(config.width, config.head_width)
        self.out = nn.Linear(config.head_width, config.n_targets)

    def encode(self, batch: GraphBatch) -> tuple[Tensor, Tensor]:
        """Node embeddings [N, width] and edge embeddings [E, edge_width]."""
        edge_ptr = batch.edge_ptr()
        h = self.embed(batch.numbers)
        e = self.edge_embed(self.rbf(self.edge_vectors(batch).norm(dim=1)))
        for layer in self.layers:
            h, e = layer(h, e, batch, edge_ptr)
        return h, e

    def node_embeddings(self, batch: GraphBatch) -> Tensor:
        return self.encode(batch)[0]

    def head(self, pooled: Tensor) -> Tensor:
        return self.out(F.softplus(self.hidden(F.softplus(pooled))))

    @classmethod
    def size_ladder(cls, n_targets: int = 1) -> dict[str, CrysGNNConfig]:
        rungs = {"xxs": (12, 1, 8, 16), "xs": (24, 2, 16, 32), "s": (40, 3, 16, 64), "m": (64, 3, 32, 128),
                 "l": (112, 4, 48, 224), "xl": (192, 5, 64, 384)}
        return {k: CrysGNNConfig(n_targets=n_targets, width=w, depth=d, edge_width=ew, head_width=hw)
                for k, (w, d, ew, hw) in rungs.items()}
