"""Learning-rate schedules: linear warmup + cosine, OneCycle, constant."""

from __future__ import annotations

import math

import torch

from crysbench.train.config import OptimConfig


def make_scheduler(opt: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int):
    total = max(total_steps, 1)
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.max_lr, total_steps=total + 1)
    if cfg.schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    warm = max(1, int(cfg.warmup_frac * total))

    def cosine(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        frac = min(1.0, (step - warm) / max(1, total - warm))
        return 0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * frac))  # floor at 2% of max_lr

    return torch.optim.lr_scheduler.LambdaLR(opt, cosine)
