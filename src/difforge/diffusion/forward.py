"""The forward (noising) process q(x_t | x_0) of a discrete DDPM."""

from __future__ import annotations

import torch

from difforge.diffusion.schedules import DiscreteSchedule


def sample_timesteps(
    batch: int, timesteps: int, *, generator: torch.Generator | None = None, device=None
) -> torch.Tensor:
    """Uniform integer timesteps over the whole range 0..T-1 (t = 0 included)."""
    return torch.randint(0, timesteps, (batch,), generator=generator, device=device)


def q_sample(
    schedule: DiscreteSchedule,
    x0: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
) -> torch.Tensor:
    """Closed-form q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I).

    Ho et al. (2020), Eq. 4: x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps.
    Coefficients are computed in float64 and cast to x0's dtype.
    """
    ab = schedule.alphas_cumprod.to(x0.device)[t]
    shape = (-1,) + (1,) * (x0.ndim - 1)
    a = ab.sqrt().to(x0.dtype).view(shape)
    s = (1 - ab).sqrt().to(x0.dtype).view(shape)
    return a * x0 + s * noise
