"""Optimiser and learning-rate schedule (all from torch.optim)."""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn

from difforge.config import TrainConfig


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """onecycle: OneCycleLR to `lr` (the article's choice); cosine: linear warm-up then
    cosine decay to 0; constant: linear warm-up then flat."""
    if cfg.lr_schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=max(total_steps, 2))
    warmup = max(cfg.warmup_steps, 0)

    def cosine(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    def constant(step: int) -> float:
        return (step + 1) / warmup if step < warmup else 1.0

    if cfg.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, cosine)
    if cfg.lr_schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, constant)
    raise ValueError(f"unknown lr schedule {cfg.lr_schedule!r}; expected cosine, constant or onecycle")


def set_schedule_step(scheduler: torch.optim.lr_scheduler.LRScheduler, step: int) -> None:
    """Put a closed-form schedule (OneCycleLR, LambdaLR) at `step`, as if built for its
    current length and stepped `step` times: how a resumed run with a new length goes on."""
    scheduler.last_epoch = step - 1
    with warnings.catch_warnings():  # "step() before optimizer.step()": no optimizer step is implied here
        warnings.simplefilter("ignore", UserWarning)
        scheduler.step()
