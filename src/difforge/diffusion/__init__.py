"""Pure tensor maths of diffusion: schedules, noise levels, the forward process, losses.

No I/O, no logging, no global RNG: randomness comes in as a `torch.Generator`.
"""

from difforge.diffusion.schedules import (
    SCHEDULES,
    DiscreteSchedule,
    beta_schedule,
    make_schedule,
)
from difforge.diffusion.forward import q_sample, sample_timesteps
from difforge.diffusion.losses import eps_mse_loss

__all__ = [
    "SCHEDULES",
    "DiscreteSchedule",
    "beta_schedule",
    "make_schedule",
    "q_sample",
    "sample_timesteps",
    "eps_mse_loss",
]
