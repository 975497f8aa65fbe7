"""Knowledge distillation of node embeddings from a frozen teacher into a student.

L = L_property(student) + λ · (1/N) Σ_atoms ||P h_student − h_teacher||², with h the per-atom
embeddings of ``node_embeddings`` ([N, D_s] and [N, D_t]) and P a learned linear map D_s → D_t
(no bias) when the widths differ, the identity otherwise. The teacher stays in eval mode (its
batch-norm statistics never move), gets no gradients and is never handed to the optimizer.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from crysbench.graph import GraphBatch
from crysbench.models._common import mean_pool
from crysbench.train.metrics import masked_loss


def embedding_width(model: nn.Module) -> int:
    """D of ``model.node_embeddings`` [N, D], read off a one-atom probe crystal (mode left unchanged)."""
    from crysbench.graph import build_graph

    p = next(model.parameters())
    probe = build_graph([[6]], [[[0.0, 0.0, 0.0]]], [torch.eye(3) * 2.0], [[True] * 3], cutoff=2.5,
                        line_graph=True).to(p.device, p.dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return int(model.node_embeddings(probe).shape[1])
    finally:
        model.train(was_training)


class DistillModel(nn.Module):
    """``student`` + projection P; ``forward`` is the student's prediction, ``loss`` the KD objective.

    Only the student and P are in :meth:`trainable_parameters`; the teacher is a frozen submodule
    (moved by ``.to`` but excluded from gradients and kept in eval mode by :meth:`train`).
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, lam: float = 1.0, kind: str = "l1") -> None:
        super().__init__()
        if lam < 0:
            raise ValueError(f"DistillModel: lambda must be >= 0, got {lam}")
        self.student, self.teacher, self.lam, self.kind = student, teacher, lam, kind
        d_s, d_t = embedding_width(student), embedding_width(teacher)
        self.projection = nn.Identity() if d_s == d_t else nn.Linear(d_s, d_t, bias=False)
        teacher.requires_grad_(False)
        teacher.eval()

    def train(self, mode: bool = True) -> DistillModel:
        super().train(mode)
        self.teacher.eval()  # the teacher's batch-norm statistics stay as trained
        return self

    def forward(self, batch: GraphBatch, target: Tensor | None = None):
        """Student predictions [B, P]; with ``target`` [B, P], :meth:`loss` instead (so a DDP
        wrapper, which only syncs gradients of ``forward`` calls, can train it: ``ddp(batch, y)``)."""
        return self.student(batch) if target is None else self._loss(batch, target)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in [*self.student.parameters(), *self.projection.parameters()] if p.requires_grad]

    def embedding_loss(self, h_student: Tensor, batch: GraphBatch) -> Tensor:
        """(1/N) Σ_atoms ||P h_s − h_t||² against the teacher's embeddings (no grad to the teacher)."""
        with torch.no_grad():
            h_teacher = self.teacher.node_embeddings(batch)
        return (self.projection(h_student) - h_teacher.to(h_student.dtype)).square().sum(1).mean()

    def loss(self, batch: GraphBatch, target: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """Total loss and its parts ('property', 'distill'); ``target`` [B, P] defaults to batch.targets
        (pass standardised targets when training on them); the mask is ``batch.mask``."""
        return self(batch, batch.targets if target is None else target)

    def _loss(self, batch: GraphBatch, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        h = self.student.node_embeddings(batch)
        pred = self.student.head(mean_pool(h, batch))
        prop = masked_loss(pred, y.to(pred.dtype), batch.mask, self.kind)
        if self.lam == 0:
            return prop, {"property": prop.detach(), "distill": torch.zeros(())}
        kd = self.embedding_loss(h, batch)
        return prop + self.lam * kd, {"property": prop.detach(), "distill": kd.detach()}
