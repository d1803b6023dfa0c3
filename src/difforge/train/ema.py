"""Exponential moving average of model weights."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """An EMA copy of a model: shadow = decay * shadow + (1 - decay) * weights.

    For the first `warmup` updates the shadow is a plain copy of the weights (early
    weights are poor and would linger in the average). Buffers are always copied.
    `shadow` is an independent module in eval mode, usable for sampling.
    """

    def __init__(self, model: nn.Module, decay: float = 0.995, warmup: int = 2000):
        if not 0 <= decay < 1:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.warmup = warmup
        self.step = 0
        self.shadow = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        copy_only = self.step < self.warmup
        for s, p in zip(self.shadow.parameters(), model.parameters()):
            if not p.requires_grad:  # frozen (a LoRA run's base): never changes, nor does its average
                continue
            if copy_only:
                s.copy_(p.detach())
            else:
                s.lerp_(p.detach().to(s.dtype), 1.0 - self.decay)
        for s, b in zip(self.shadow.buffers(), model.buffers()):
            s.copy_(b)
        self.step += 1

    def state_dict(self) -> dict:
        return {"step": self.step, "decay": self.decay, "warmup": self.warmup}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
