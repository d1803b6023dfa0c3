"""Pure tensor maths of diffusion: schedules, noise processes, the forward process.

No I/O, no logging, no global RNG: randomness comes in as a `torch.Generator`.
Every framework is a `NoiseProcess` (`process.py`), built by name from a `FrameworkSpec`
(`frameworks.make_process`).
"""

from difforge.diffusion.forward import q_sample, sample_timesteps
from difforge.diffusion.frameworks import FRAMEWORKS, FrameworkSpec, make_process
from difforge.diffusion.process import NoiseProcess, Preconditioning
from difforge.diffusion.schedules import (
    SCHEDULES,
    DiscreteSchedule,
    beta_schedule,
    make_schedule,
)

__all__ = [
    "SCHEDULES",
    "DiscreteSchedule",
    "beta_schedule",
    "make_schedule",
    "q_sample",
    "sample_timesteps",
    "NoiseProcess",
    "Preconditioning",
    "FRAMEWORKS",
    "FrameworkSpec",
    "make_process",
]
