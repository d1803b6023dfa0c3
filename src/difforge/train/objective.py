"""The DDPM training objective for one batch (Ho et al. 2020, Algorithm 1)."""

from __future__ import annotations

import torch
from torch import nn

from difforge.diffusion import DiscreteSchedule, eps_mse_loss, q_sample, sample_timesteps


def drop_labels(
    labels: torch.Tensor, p: float, null_label: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Replace each label by the null label independently with probability p
    (classifier-free guidance training, Ho & Salimans 2022)."""
    if p <= 0:
        return labels
    drop = torch.rand(labels.shape, generator=generator) < p
    return torch.where(drop.to(labels.device), torch.full_like(labels, null_label), labels)


def ddpm_loss(
    model: nn.Module,
    schedule: DiscreteSchedule,
    x0: torch.Tensor,
    cond: torch.Tensor | None,
    generator: torch.Generator,
    autocast_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """eps-prediction MSE at uniform timesteps t in 0..T-1 (t = 0 included).

    Randomness (t, eps) is drawn on the CPU from `generator` so runs are reproducible
    and resumable on any device.
    """
    b = x0.shape[0]
    t = sample_timesteps(b, schedule.timesteps, generator=generator).to(x0.device)
    eps = torch.randn(x0.shape, generator=generator).to(x0.device, x0.dtype)
    x_t = q_sample(schedule, x0, t, eps)
    with torch.autocast(x0.device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        pred = model(x_t, t.to(torch.float32), cond)
    return eps_mse_loss(pred, eps)
