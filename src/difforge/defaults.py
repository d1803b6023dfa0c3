"""Sampling defaults, in one place for every command, the API and the server (no torch
here, so `difforge --help` can show them)."""

from __future__ import annotations

# Steps per sampler when not given (None: every timestep of the schedule). Heun makes two
# denoiser calls per step (2N - 1 in all), so 25 Heun steps cost about 50 Euler steps.
DEFAULT_STEPS = {"ddpm": None, "ddim": 50, "euler": 50, "euler-a": 50, "heun": 25, "dpmpp-2m": 25, "dpmpp-2m-sde": 25,
                 "dpmpp-3m": 25, "langevin": 50, "reverse-sde": 100, "pc": 50}
# Sigma grid per sampler when not given: the discrete samplers step through the training
# timesteps ("trailing" starts at the last one, Lin et al. 2024); the ODE/SDE solvers use
# Karras et al. (2022)'s rho = 7 grid, which they were tuned with.
DEFAULT_GRID = {"ddpm": "trailing", "ddim": "trailing", "langevin": "log-snr"}  # langevin: NCSN's geometric levels
DEFAULT_GRID_OTHERS = "karras"
# The sampler of every command, the API, the server and the final grids when none is given.
DEFAULT_SAMPLER = "ddim"
# Classifier-free guidance scale of a class-conditional model when none is given.
DEFAULT_CFG = 3.0


def default_grid(sampler: str) -> str:
    return DEFAULT_GRID.get(sampler, DEFAULT_GRID_OTHERS)
