"""Which noise levels a sampler visits: sigma grids built from a discrete schedule.

Every grid is a float64 tensor of decreasing noise levels ending in 0 (the clean image),
so a sampler with `len(sigmas) - 1` steps makes that many denoiser calls (first order).
"""

from __future__ import annotations

import torch

from difforge.diffusion.schedules import DiscreteSchedule

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
    schedule: DiscreteSchedule, steps: int | None = None, spacing: str = "leading"
) -> torch.Tensor:
    """Sigmas at a subset of the schedule's timesteps (all of them when `steps` is None),
    in decreasing order, with a final 0. With all timesteps this is the grid of DDPM's
    1000-step ancestral sampler (Ho et al. 2020, Algorithm 2), t = 0 included."""
    steps = schedule.timesteps if steps is None else steps
    t = timestep_subset(schedule.timesteps, steps, spacing)
    return torch.cat([schedule.sigmas[t], torch.zeros(1, dtype=torch.float64)])
