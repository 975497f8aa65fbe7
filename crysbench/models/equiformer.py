"""A small E(3)-equivariant graph attention model in the spirit of Equiformer / EquiformerV2.

Every atom carries ``width`` scalar channels s [N, C] (l = 0) and ``width`` vector channels
v [N, 3, C] (l = 1, odd parity). Edge directions enter through the l = 1 spherical harmonic
(the unit vector r̂, up to a constant) and distances through a Gaussian radial basis. A message
j → i applies the four parity-allowed l ≤ 1 tensor-product paths with radial weights:

    s-msg = w00 ⊙ s_j + w11 ⊙ (v_j · r̂)          (0⊗0→0, 1⊗1→0)
    v-msg = r̂ ⊗ (w01 ⊙ s_j) + w10 ⊙ v_j          (0⊗1→1, 1⊗0→1)

Attention weights are an edge softmax of invariant logits (query from s_i, key from the scalar
message), shared by the scalar and vector parts. Vectors are mixed across channels only by
bias-free linear maps, normalised by their RMS norm and gated by sigmoids of scalars, so the
scalar output is invariant and the vector features equivariant under rotations and reflections.

What it simplifies, honestly: l_max = 1 (EquiformerV2 uses l up to 6–8), no 1⊗1→1 (cross
product) path, no eSCN SO(2) convolutions or S2-grid activations, single-scalar attention
logits per head, Gaussian rather than Bessel radial functions with no smooth cutoff envelope,
and no force head. It is an honest l ≤ 1 equivariant transformer, not a reimplementation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
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
class EquiformerConfig(ModelConfig):
    """width = channels per irrep (l = 0 and l = 1); width must be divisible by heads."""

    width: int = 32
    depth: int = 3
    heads: int = 4
    n_rbf: int = 32
    rbf_max: float = 8.0  # Å

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.width % self.heads:
            raise ValueError(f"EquiformerConfig.width ({self.width}) must be divisible by "
                             f"heads ({self.heads})")


def vector_norm(v: Tensor, eps: float = 1e-12) -> Tensor:
    """Norms [N, C] of vector channels v [N, 3, C], smooth at zero."""
    return torch.sqrt((v * v).sum(1) + eps)


class EquivariantNorm(nn.Module):
    """LayerNorm on scalars; vectors divided by their RMS norm over channels, times a per-channel scale."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.scalar = nn.LayerNorm(width)
        self.vector_scale = nn.Parameter(torch.ones(width))

    def forward(self, s: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        rms = torch.sqrt((v * v).sum(1).mean(1, keepdim=True) + 1e-12)  # [N, 1]
        return self.scalar(s), v / rms[:, None, :] * self.vector_scale


class EquivariantAttention(nn.Module):
    """Attention over neighbour edges with l ≤ 1 tensor-product messages."""

    def __init__(self, config: EquiformerConfig) -> None:
        super().__init__()
        c, self.heads = config.width, config.heads
        self.radial = mlp([config.n_rbf, c, 4 * c])
        self.lin_s, self.lin_v = nn.Linear(c, c), nn.Linear(c, c, bias=False)
        self.query, self.key = nn.Linear(c, c), nn.Linear(c, c)
        self.out_s, self.out_v = nn.Linear(c, c), nn.Linear(c, c, bias=False)

    def messages(self, s: Tensor, v: Tensor, rbf: Tensor, rhat: Tensor, j: Tensor) -> tuple[Tensor, Tensor]:
        w00, w11, w01, w10 = self.radial(rbf).chunk(4, dim=1)
        sj, vj = self.lin_s(s)[j], self.lin_v(v)[j]
        m_s = w00 * sj + w11 * (vj * rhat[:, :, None]).sum(1)
        m_v = rhat[:, :, None] * (w01 * sj)[:, None, :] + w10[:, None, :] * vj
        return m_s, m_v

    def forward(self, s: Tensor, v: Tensor, rbf: Tensor, rhat: Tensor,
                batch: GraphBatch) -> tuple[Tensor, Tensor]:
        i, n, e = batch.edge_i, s.shape[0], batch.num_edges
        m_s, m_v = self.messages(s, v, rbf, rhat, batch.edge_j)
        q = self.query(s)[i].view(e, self.heads, -1)
        k = self.key(m_s).view(e, self.heads, -1)
        alpha = edge_softmax((q * k).sum(-1) / math.sqrt(q.shape[-1]), i, n)  # [E, H]
        alpha = alpha.repeat_interleave(s.shape[1] // self.heads, dim=1)  # [E, C]
        s_agg = ops.scatter(alpha * m_s, i, n, "sum")
        v_agg = ops.scatter(alpha[:, None, :] * m_v, i, n, "sum")
        return self.out_s(s_agg), self.out_v(v_agg)


class GatedFeedForward(nn.Module):
    """Scalar SiLU MLP; vectors mixed linearly and gated by sigmoids of scalars."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.scalar_in = nn.Linear(width, 3 * width)  # 2C hidden + C gates
        self.scalar_out = nn.Linear(2 * width, width)
        self.vector_in = nn.Linear(width, width, bias=False)
        self.vector_out = nn.Linear(width, width, bias=False)

    def forward(self, s: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        hidden, gate = self.scalar_in(s).split([2 * s.shape[1], s.shape[1]], dim=1)
        ds = self.scalar_out(F.silu(hidden))
        dv = self.vector_out(torch.sigmoid(gate)[:, None, :] * self.vector_in(v))
        return ds, dv


class EquiformerBlock(nn.Module):
    def __init__(self, config: EquiformerConfig) -> None:
        super().__init__()
        self.norm_attn, self.norm_ffn = EquivariantNorm(config.width), EquivariantNorm(config.width)
        self.attn = EquivariantAttention(config)
        self.ffn = GatedFeedForward(config.width)

    def forward(self, s: Tensor, v: Tensor, rbf: Tensor, rhat: Tensor, batch: GraphBatch):
        ds, dv = self.attn(*self.norm_attn(s, v), rbf, rhat, batch)
        s, v = s + ds, v + dv
        ds, dv = self.ffn(*self.norm_ffn(s, v))
        return s + ds, v + dv


@register("equiformer")
class Equiformer(CrystalModel):
    Config = EquiformerConfig

    def __init__(self, config: EquiformerConfig) -> None:
        super().__init__(config)
        c = config.width
        self.embed = AtomEmbedding(c)
        self.rbf = GaussianBasis(0.0, config.rbf_max, config.n_rbf)
        self.edge_degree = nn.Linear(config.n_rbf, c)  # initial vectors: an edge-degree embedding
        self.blocks = nn.ModuleList(EquiformerBlock(config) for _ in range(config.depth))
        self.norm_out = nn.LayerNorm(c)
        self.out = mlp([2 * c, c, config.n_targets])

    def features(self, batch: GraphBatch) -> tuple[Tensor, Tensor]:
        """Final scalar [N, C] (invariant) and vector [N, 3, C] (equivariant) features."""
        vec = self.edge_vectors(batch)
        dist = vec.norm(dim=1)
        rhat, rbf = vec / dist[:, None], self.rbf(dist)
        s = self.embed(batch.numbers)
        m_v = rhat[:, :, None] * (self.edge_degree(rbf) * s[batch.edge_j])[:, None, :]
        v = ops.scatter(m_v, batch.edge_i, batch.num_atoms, "mean")
        for block in self.blocks:
            s, v = block(s, v, rbf, rhat, batch)
        return s, v

    def node_embeddings(self, batch: GraphBatch) -> Tensor:
        s, v = self.features(batch)
        return torch.cat([self.norm_out(s), vector_norm(v)], dim=1)

    def head(self, pooled: Tensor) -> Tensor:
        return self.out(pooled)

    @classmethod
    def size_ladder(cls, n_targets: int = 1) -> dict[str, EquiformerConfig]:
        rungs = {"xxs": (8, 1, 2), "xs": (16, 2, 4), "s": (28, 2, 4), "m": (44, 3, 4), "l": (80, 3, 8),
                 "xl": (128, 5, 8)}
        return {k: EquiformerConfig(n_targets=n_targets, width=w, depth=d, heads=nh)
                for k, (w, d, nh) in rungs.items()}
