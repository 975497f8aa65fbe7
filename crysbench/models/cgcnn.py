"""CGCNN (Xie & Grossman, PRL 2018): gated graph convolutions on the periodic neighbour graph.

v_i ← softplus(v_i + BN(Σ_j σ(z_ij W_f + b_f) ⊙ softplus(z_ij W_s + b_s))), z_ij = [v_i, v_j, u_ij],
u_ij a Gaussian expansion of the distance (0–8 Å, step 0.2 Å); mean pooling; an MLP head.
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
class CGCNNConfig(ModelConfig):
    """width = atom feature length, depth = number of convolutions, head_width = hidden size of the head."""

    width: int = 64
    depth: int = 3
    head_width: int = 128
    head_depth: int = 1
    rbf_max: float = 8.0  # Å
    rbf_step: float = 0.2  # Å


class GatedConv(nn.Module):
    """One CGCNN convolution; messages are summed per centre atom with a CSR segment reduction."""

    def __init__(self, width: int, edge_width: int) -> None:
        super().__init__()
        self.fc = nn.Linear(2 * width + edge_width, 2 * width)
        self.bn_edge = nn.BatchNorm1d(2 * width)
        self.bn_node = nn.BatchNorm1d(width)

    def forward(self, h: Tensor, edge_attr: Tensor, batch: GraphBatch, edge_ptr: Tensor) -> Tensor:
        # fc([v_i, v_j, u_ij]) taken block by block: the two atom blocks are applied once per atom and
        # gathered to the edges, ~E/N (about 12) times fewer FLOPs than fc on concatenated edge rows.
        width = h.shape[1]
        w = self.fc.weight
        both = F.linear(h, torch.cat([w[:, :width], w[:, width:2 * width]], dim=0))  # [N, 4W]
        z = both[batch.edge_i, : 2 * width] + both[batch.edge_j, 2 * width:]
        z = z + F.linear(edge_attr, w[:, 2 * width:], self.fc.bias)
        gate, core = self.bn_edge(z).chunk(2, dim=1)
        message = torch.sigmoid(gate) * F.softplus(core)
        summed = ops.segment_csr(message, edge_ptr, "sum")
        return F.softplus(h + self.bn_node(summed))


@register("cgcnn")
class CGCNN(CrystalModel):
    Config = CGCNNConfig

    def __init__(self, config: CGCNNConfig) -> None:
        super().__init__(config)
        n_rbf = round(config.rbf_max / config.rbf_step) + 1
        self.rbf = GaussianBasis(0.0, config.rbf_max, n_rbf, width=config.rbf_step)
        self.embed = AtomEmbedding(config.width)
        self.convs = nn.ModuleList(GatedConv(config.width, n_rbf) for _ in range(config.depth))
        sizes = [config.width] + [config.head_width] * config.head_depth
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True))
        self.out = nn.Linear(sizes[-1], config.n_targets)

    def node_embeddings(self, batch: GraphBatch) -> Tensor:
        edge_attr = self.rbf(self.edge_vectors(batch).norm(dim=1))
        edge_ptr = batch.edge_ptr()
        h = self.embed(batch.numbers)
        for conv in self.convs:
            h = conv(h, edge_attr, batch, edge_ptr)
        return h

    def head(self, pooled: Tensor) -> Tensor:
        x = F.softplus(pooled)
        for layer in self.hidden:
            x = F.softplus(layer(x))
        return self.out(x)

    @classmethod
    def size_ladder(cls, n_targets: int = 1) -> dict[str, CGCNNConfig]:
        rungs = {"xxs": (12, 1, 16), "xs": (24, 2, 32), "s": (40, 3, 64), "m": (72, 3, 128),
                 "l": (128, 4, 256), "xl": (224, 5, 384)}
        return {k: CGCNNConfig(n_targets=n_targets, width=w, depth=d, head_width=hw)
                for k, (w, d, hw) in rungs.items()}
