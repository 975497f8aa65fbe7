"""Losses on standardized targets and metrics in original units (MAE, RMSE, R² per property)."""

from __future__ import annotations

import torch
from torch import Tensor


def masked_loss(pred: Tensor, target: Tensor, mask: Tensor, kind: str = "l1") -> Tensor:
    """(1/N)·Σ_i |ŷ_i − y_i|·δ_i over the properties each structure has (δ = mask); MSE likewise."""
    diff = (pred - target) * mask
    err = diff.abs() if kind == "l1" else diff.square()
    return err.sum() / mask.sum().clamp_min(1)


class Normalizer:
    """Per-property standardization fitted on the training split (masked)."""

    def __init__(self, mean: Tensor, std: Tensor):
        self.mean, self.std = mean.double(), std.double().clamp_min(1e-12)

    @classmethod
    def fit(cls, targets: Tensor, mask: Tensor) -> Normalizer:
        m = mask.double()
        n = m.sum(0).clamp_min(1)
        mean = (targets.double() * m).sum(0) / n
        var = (((targets.double() - mean) * m) ** 2).sum(0) / n
        return cls(mean, var.sqrt())

    def norm(self, y: Tensor) -> Tensor:
        return ((y.double() - self.mean.to(y.device)) / self.std.to(y.device)).to(y.dtype)

    def denorm(self, y: Tensor) -> Tensor:
        return y.double() * self.std.to(y.device) + self.mean.to(y.device)

    def state(self) -> dict:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}


def regression_metrics(pred: Tensor, target: Tensor, mask: Tensor, names: list[str]) -> dict:
    """Per-property MAE, RMSE, R² and count, in the targets' own units; NaN-free (count 0 → None)."""
    out = {}
    for p, name in enumerate(names):
        m = mask[:, p]
        y, yh = target[m, p].double(), pred[m, p].double()
        if y.numel() == 0:
            out[name] = {"n": 0, "mae": None, "rmse": None, "r2": None}
            continue
        err = yh - y
        ss_tot = float(((y - y.mean()) ** 2).sum())
        out[name] = {
            "n": int(y.numel()),
            "mae": float(err.abs().mean()),
            "rmse": float(err.square().mean().sqrt()),
            "r2": 1.0 - float(err.square().sum()) / ss_tot if ss_tot > 0 else None,
            "mae_mean_baseline": float((y - y.mean()).abs().mean()),
        }
    return out
