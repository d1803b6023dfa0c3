"""Sampling defaults, in one place for every command, the API and the server (no torch
here, so `difforge --help` can show them)."""

from __future__ import annotations

# Steps per sampler when not given (None: every timestep of the schedule). Heun makes two
# denoiser calls per step (2N - 1 in all), so 25 Heun steps cost about 50 Euler steps.
# dpmpp-2m-sde: 10, the best FD per call of the sweep in benchmarks/sampler_sweep.md (fewer steps
# beat 15 and 25 on a briefly trained model: the SDE's fresh noise corrects its errors).
DEFAULT_STEPS = {"ddpm": None, "ddim": 50, "euler": 50, "euler-a": 50, "heun": 25, "dpmpp-2m": 25, "dpmpp-2m-sde": 10,
                 "dpmpp-3m": 25, "langevin": 50, "reverse-sde": 100, "pc": 50}
# Sigma grid per sampler when not given: the discrete samplers step through the training
# timesteps ("trailing" starts at the last one, Lin et al. 2024); the ODE/SDE solvers use
# Karras et al. (2022)'s rho = 7 grid, which they were tuned with.
DEFAULT_GRID = {"ddpm": "trailing", "ddim": "trailing", "langevin": "log-snr"}  # langevin: NCSN's geometric levels
DEFAULT_GRID_OTHERS = "karras"
# The sampler of every command, the API, the server and the final grids when none is given:
# chosen by benchmarks/sampler_sweep.py on the quick-start model of the time, DDPM for 1400 steps
# (FD per network call, N = 2000, three seed sets; the record and charts are
# benchmarks/results/sampler_sweep.{json,md,png}).
DEFAULT_SAMPLER = "dpmpp-2m-sde"
# Classifier-free guidance of a class-conditional pixel model when none is given (the same
# sweep, N = 2000 x 3 seed sets): scale 2, applied only at noise levels sigma in [0.3, 3]
# (Kynkaanniemi et al. 2024) and the conditional model alone elsewhere. FD 0.77 against 1.06
# for scale 1.5 at every level, at fewer network passes; 3 at every level over-saturates a
# briefly trained model. `--cfg-interval all` guides at every level (best scale there: 1.5).
DEFAULT_CFG = 2.0
DEFAULT_CFG_INTERVAL = (0.3, 3.0)
# ... of a text-to-image model: chosen by benchmarks/text_guidance.py on
# configs/text-pixel.yaml's model (every fashion-colour prompt, dpmpp-2m-sde at 10 steps): garment and colour
# right for 0.70 of 432 seen prompts at 2, 0.60 at 3 (colour itself slips at 3), 0.72 at 1.5
# (benchmarks/results/text_guidance.json, 2400 steps); after 3600 steps 0.798 at 2, 0.785 at 1.5
# (text_guidance_3600.json).
DEFAULT_CFG_TEXT = 2.0
# ... of an unCLIP decoder (guided from the null CLIP image embedding): the scale of its record
# (benchmarks/unclip.py).
DEFAULT_CFG_IMAGE_EMBEDDING = 3.0


def default_grid(sampler: str) -> str:
    return DEFAULT_GRID.get(sampler, DEFAULT_GRID_OTHERS)
