"""Discrete-time noise schedules (DDPM) and their view in noise-level (sigma) space.

A discrete VP schedule has betas beta_1..beta_T and alpha_bar_t = prod_{s<=t}(1 - beta_s).
The same noisy image seen in the variance-exploding frame of Karras et al. (2022) is
x / sqrt(alpha_bar), with noise level sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t).
Samplers work in that frame; `DiscreteSchedule` converts between the two.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from difforge.diffusion.process import SigmaGrid


def _linear_betas(timesteps: int, beta_start: float, beta_end: float) -> torch.Tensor:
    # Ho et al. (2020), Section 4: betas linear from 1e-4 to 0.02 over T = 1000.
    return torch.linspace(beta_start, beta_end, timesteps, dtype=torch.float64)


def _cosine_betas(timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    # Nichol & Dhariwal (2021), Eq. 17: alpha_bar(t) = f(t) / f(0),
    # f(t) = cos^2(((t / T) + s) / (1 + s) * pi / 2), betas clipped to max_beta.
    steps = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    alpha_bar = f / f[0]
    betas = 1 - alpha_bar[1:] / alpha_bar[:-1]
    return betas.clamp(max=max_beta)


def _scaled_linear_betas(timesteps: int, beta_start: float, beta_end: float) -> torch.Tensor:
    # Linear in sqrt(beta) (Rombach et al. 2022's latent diffusion; diffusers' "scaled_linear").
    return torch.linspace(beta_start**0.5, beta_end**0.5, timesteps, dtype=torch.float64) ** 2


SCHEDULES = ("linear", "scaled_linear", "cosine")


def beta_schedule(
    name: str, timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02
) -> torch.Tensor:
    """Betas (float64, length `timesteps`) of a named schedule."""
    if timesteps < 1:
        raise ValueError(f"timesteps must be >= 1, got {timesteps}")
    if name in ("linear", "scaled_linear"):
        if not 0 < beta_start < beta_end < 1:
            raise ValueError(
                f"{name} schedule needs 0 < beta_start < beta_end < 1, got {beta_start}, {beta_end}"
            )
        betas = _linear_betas if name == "linear" else _scaled_linear_betas
        return betas(timesteps, beta_start, beta_end)
    if name == "cosine":
        return _cosine_betas(timesteps)
    raise ValueError(f"unknown schedule {name!r}; expected one of {sorted(SCHEDULES)}")


@dataclass(frozen=True)
class DiscreteSchedule(SigmaGrid):
    """A discrete DDPM schedule with its derived quantities, all float64 on the CPU.

    Timesteps are 0-based: index t in 0..T-1 is the paper's step t + 1.
    """

    betas: torch.Tensor

    @property
    def timesteps(self) -> int:
        return self.betas.shape[0]

    @property
    def alphas(self) -> torch.Tensor:
        return 1.0 - self.betas

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return torch.cumprod(self.alphas, dim=0)

    @property
    def sigmas(self) -> torch.Tensor:
        """Noise level of each timestep in the variance-exploding frame (increasing)."""
        ab = self.alphas_cumprod
        return ((1 - ab) / ab).sqrt()


def make_schedule(
    name: str, timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02
) -> DiscreteSchedule:
    return DiscreteSchedule(beta_schedule(name, timesteps, beta_start, beta_end))


def sigma_to_alpha_bar(sigma: torch.Tensor) -> torch.Tensor:
    """alpha_bar = 1 / (1 + sigma^2): the VP signal fraction of a VE noise level."""
    return 1.0 / (1.0 + sigma**2)
