"""Pieces every crystal model shares: the config base, atom embedding, radial bases, pooling, edge softmax."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from crysbench import ops
from crysbench.features import atom_feature_table
from crysbench.graph import GraphBatch, edge_vectors


@dataclass(frozen=True)
class ModelConfig:
    """Knobs every model has: hidden ``width``, number of message-passing layers ``depth``, and the
    number of (intensive) targets the head predicts. Subclasses add model-specific knobs."""

    n_targets: int = 1
    width: int = 64
    depth: int = 3

    def __post_init__(self) -> None:
        for name in ("n_targets", "width", "depth"):
            if getattr(self, name) < 1:
                raise ValueError(f"{type(self).__name__}.{name} must be >= 1, got {getattr(self, name)}")


class CrystalModel(nn.Module):
    """Base class: ``forward(batch) -> [B, n_targets]`` is a head on mean-pooled node embeddings."""

    Config: ClassVar[type[ModelConfig]] = ModelConfig
    name: ClassVar[str] = ""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if not isinstance(config, self.Config):
            raise TypeError(f"{type(self).__name__} needs a {self.Config.__name__}, "
                            f"got {type(config).__name__}")
        self.config = config

    def edge_vectors(self, batch: GraphBatch) -> Tensor:
        """Edge vectors [E, 3] Å in the model's dtype (a float32 model accepts a float64 graph)."""
        return edge_vectors(batch).to(next(self.parameters()).dtype)

    def node_embeddings(self, batch: GraphBatch) -> Tensor:
        """Per-atom invariant embeddings [N, D] (what distillation matches and pooling averages)."""
        raise NotImplementedError

    def head(self, pooled: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, batch: GraphBatch) -> Tensor:
        """Predictions [B, n_targets] of intensive properties (mean pooling over atoms)."""
        return self.head(mean_pool(self.node_embeddings(batch), batch))

    def n_params(self) -> int:
        """Exact number of trainable scalars."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    @classmethod
    def size_ladder(cls, n_targets: int = 1) -> dict[str, ModelConfig]:
        """Named configs from ~10^3.5 to ~10^6 parameters, smallest first."""
        raise NotImplementedError


def mean_pool(node: Tensor, batch: GraphBatch) -> Tensor:
    """Average node rows [N, D] over each crystal → [B, D] (atoms of a crystal are contiguous)."""
    return ops.segment_csr(node, batch.ptr, "mean")


class AtomEmbedding(nn.Module):
    """Fixed one-hot atom features (crysbench.features, [101, F]) followed by a learned linear map."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.register_buffer("table", atom_feature_table())
        self.linear = nn.Linear(self.table.shape[1], width)

    def forward(self, numbers: Tensor) -> Tensor:
        return self.linear(self.table[numbers])


class GaussianBasis(nn.Module):
    """exp(-((x - mu_k) / width)^2) for ``n`` centres evenly spaced on [start, stop]."""

    def __init__(self, start: float, stop: float, n: int, width: float | None = None) -> None:
        super().__init__()
        self.register_buffer("centers", torch.linspace(start, stop, n))
        self.width = width if width is not None else (stop - start) / max(n - 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        return torch.exp(-(((x[..., None] - self.centers) / self.width) ** 2))


def edge_softmax(logits: Tensor, index: Tensor, num_nodes: int) -> Tensor:
    """Softmax of ``logits`` [E, H] over the edges sharing ``index`` (scatter max, then sum).

    The max is detached: subtracting any per-group constant leaves the softmax unchanged, so this
    only buys stability and costs no gradient.
    """
    top = ops.scatter(logits.detach(), index, num_nodes, "max")
    expo = torch.exp(logits - top[index])
    denom = ops.scatter(expo, index, num_nodes, "sum")
    return expo / denom[index]


def mlp(sizes: list[int], act: type[nn.Module] = nn.SiLU) -> nn.Sequential:
    """Linear layers with ``act`` between them (none after the last)."""
    layers: list[nn.Module] = []
    for k, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if k < len(sizes) - 2:
            layers.append(act())
    return nn.Sequential(*layers)
