"""Which noise levels a sampler visits: sigma grids built from a process's discretization
(a `NoiseProcess`, or a `DiscreteSchedule`).

Every grid is a float64 tensor of decreasing noise levels ending in 0 (the clean image),
so a sampler with `len(sigmas) - 1` steps makes that many denoiser calls (first order).
`sigma_grid(schedule, steps, name)` is the one entry point; names are in `GRIDS`.
"""

from __future__ import annotations

import math

import torch

from difforge.diffusion.process import Discretization

SPACINGS = ("leading", "trailing", "linspace")


def timestep_subset(timesteps: int, steps: int, spacing: str = "leading") -> torch.Tensor:
    """`steps` integer timesteps out of 0..T-1, in decreasing order.

    Spacings follow Table 2 of Lin et al. (2024), "Common diffusion noise schedules and
    sample steps are flawed": leading = k * (T // steps), trailing = round(T - k * T / steps) - 1,
    linspace = round(linspace(0, T - 1, steps)).
    """
    if not 1 <= steps <= timesteps:
        raise ValueError(f"steps must be in 1..{timesteps}, got {steps}")
    if spacing == "leading":
        t = torch.arange(steps, dtype=torch.int64) * (timesteps // steps)
    elif spacing == "trailing":
        t = torch.round(torch.arange(timesteps, 0, -timesteps / steps, dtype=torch.float64)).long() - 1
        return t
    elif spacing == "linspace":
        t = torch.linspace(0, timesteps - 1, steps, dtype=torch.float64).round().long()
    else:
        raise ValueError(f"unknown spacing {spacing!r}; expected one of {sorted(SPACINGS)}")
    return t.flip(0)


def discrete_sigmas(
    schedule: Discretization, steps: int | None = None, spacing: str = "leading"
) -> torch.Tensor:
    """Sigmas at a subset of the schedule's timesteps (all of them when `steps` is None),
    in decreasing order, with a final 0. With all timesteps this is the grid of DDPM's
    1000-step ancestral sampler (Ho et al. 2020, Algorithm 2), t = 0 included."""
    steps = schedule.timesteps if steps is None else steps
    t = timestep_subset(schedule.timesteps, steps, spacing)
    return torch.cat([schedule.sigmas[t], torch.zeros(1, dtype=torch.float64)])


def karras_sigmas(sigma_min: float, sigma_max: float, steps: int, rho: float = 7.0) -> torch.Tensor:
    """`steps` noise levels from sigma_max down to sigma_min, then 0 (float64).

    sigma_i = (sigma_max^(1/rho) + i / (steps - 1) * (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho
    (Karras et al. 2022, Eq. 5; rho = 7 spends more steps at low noise).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)  # [0.] when steps == 1
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    sigmas[0] = sigma_max  # exact ends (the power loses the last bits)
    if steps > 1:
        sigmas[-1] = sigma_min
    return torch.cat([sigmas, torch.zeros(1, dtype=torch.float64)])


def log_snr_sigmas(sigma_min: float, sigma_max: float, steps: int) -> torch.Tensor:
    """`steps` noise levels uniform in log-SNR (= -2 log sigma) from sigma_max to
    sigma_min, then 0 (float64): equal steps h in lambda = -log sigma, the grid of
    DPM-Solver (Lu et al. 2022, Section 3.3, "uniform logSNR")."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
    sigmas = torch.linspace(math.log(sigma_max), math.log(sigma_min), steps, dtype=torch.float64).exp()
    sigmas[0] = sigma_max  # exact ends
    if steps > 1:
        sigmas[-1] = sigma_min
    return torch.cat([sigmas, torch.zeros(1, dtype=torch.float64)])


GRIDS = SPACINGS + ("karras", "log-snr")


def sigma_grid(schedule: Discretization, steps: int | None, name: str = "trailing") -> torch.Tensor:
    """The sampler grid `name` with `steps` steps for a process's levels: float64,
    decreasing, ending in 0, `steps + 1` values.

    - "leading", "trailing", "linspace": sigmas at a subset of the training timesteps
      (`timestep_subset`); `steps=None` takes every timestep (DDPM's 1000-step grid).
    - "karras": Karras et al. (2022) rho = 7 between the schedule's sigma_min and sigma_max.
    - "log-snr": uniform in log-SNR between the same two noise levels.
    """
    if name not in GRIDS:
        raise ValueError(f"unknown sigma grid {name!r}; expected one of {sorted(GRIDS)}")
    if name in SPACINGS:
        return discrete_sigmas(schedule, steps, name)
    if steps is None:
        raise ValueError(f"the {name!r} grid needs a number of steps")
    if name == "karras":
        return karras_sigmas(schedule.sigma_min, schedule.sigma_max, steps)
    return log_snr_sigmas(schedule.sigma_min, schedule.sigma_max, steps)
