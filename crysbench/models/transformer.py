"""Graph transformer for crystals: multi-head attention of each atom over its periodic neighbours.

Attention is restricted to the neighbour graph: every edge i → (j, image S) is one key, so an atom
attends to each periodic image of a neighbour separately and the model is periodic-aware without
positional encodings. Keys and values are modulated by a Gaussian expansion of the distance, and
the logits get a learned per-head distance bias. The edge softmax uses scatter max and sum.
Pre-norm residual blocks (attention, then a SiLU feed-forward).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from crysbench import ops
from crysbench.graph import GraphBatch
from crysbench.models import register
from crysbench.models._common import (
    AtomEmbedding,
    CrystalModel,
    GaussianBasis,
    ModelConfig,
    edge_softmax,
    mlp,
)


@dataclass(frozen=True)
class TransformerConfig(ModelConfig):
    """width must be divisible by heads; ffn_mult scales the feed-forward hidden size."""

    width: int = 64
    depth: int = 3
    heads: int = 4
    ffn_mult: int = 2
    n_rbf: int = 40
    rbf_max: float = 8.0  # Å

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.width % self.heads:
            raise ValueError(f"TransformerConfig.width ({self.width}) must be divisible by "
                             f"heads ({self.heads})")


class GraphAttentionBlock(nn.Module):
    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        w, self.heads = config.width, config.heads
        self.norm_attn, self.norm_ffn = nn.LayerNorm(w), nn.LayerNorm(w)
        self.query, self.key, self.value = nn.Linear(w, w), nn.Linear(w, w), nn.Linear(w, w)
        self.edge = nn.Linear(config.n_rbf, 2 * w + config.heads)  # key shift, value gate, logit bias
        self.proj = nn.Linear(w, w)
        self.ffn = mlp([w, config.ffn_mult * w, w])

    def attend(self, h: Tensor, rbf: Tensor, batch: GraphBatch) -> Tensor:
        i, j, n = batch.edge_i, batch.edge_j, h.shape[0]
        key_shift, value_gate, bias = self.edge(rbf).split([h.shape[1], h.shape[1], self.heads], dim=1)
        shape = (i.shape[0], self.heads, -1)
        q = self.query(h)[i].view(shape)
        k = (self.key(h)[j] + key_shift).view(shape)
        v = (self.value(h)[j] * F.silu(value_gate)).view(shape)
        logits = (q * k).sum(-1) / math.sqrt(q.shape[-1]) + bias  # [E, H]
        alpha = edge_softmax(logits, i, n)
        out = ops.scatter((alpha[..., None] * v).reshape(i.shape[0], -1), i, n, "sum")
        return self.proj(out)

    def forward(self, h: Tensor, rbf: Tensor, batch: GraphBatch) -> Tensor:
        h = h + self.attend(self.norm_attn(h), rbf, batch)
        return h + self.ffn(self.norm_ffn(h))


@register("transformer")
class CrystalTransformer(CrystalModel):
    Config = TransformerConfig

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__(config)
        self.embed = AtomEmbedding(config.width)
        self.rbf = GaussianBasis(0.0, config.rbf_max, config.n_rbf)
        self.blocks = nn.ModuleList(GraphAttentionBlock(config) for _ in range(config.depth))
        self.norm_out = nn.LayerNorm(config.width)
        self.out = mlp([config.width, config.width, config.n_targets])

    def node_embeddings(self, batch: GraphBatch) -> Tensor:
        rbf = self.rbf(self.edge_vectors(batch).norm(dim=1))
        h = self.embed(batch.numbers)
        for block in self.blocks:
            h = block(h, rbf, batch)
        return self.norm_out(h)

    def head(self, pooled: Tensor) -> Tensor:
        return self.out(pooled)

    @classmethod
    def size_ladder(cls, n_targets: int = 1) -> dict[str, TransformerConfig]:
        rungs = {"xxs": (10, 1, 2), "xs": (20, 2, 4), "s": (32, 3, 4), "m": (64, 3, 4), "l": (112, 4, 8),
                 "xl": (160, 6, 8)}
        return {k: TransformerConfig(n_targets=n_targets, width=w, depth=d, heads=nh)
                for k, (w, d, nh) in rungs.items()}
