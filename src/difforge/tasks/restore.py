"""Restoration by running the reverse process from part-way: SDEdit and known-noise denoising.

SDEdit (Meng et al. 2022, "SDEdit: guided image synthesis and editing with stochastic
differential equations"): noise the input to level sigma(t0), t0 = strength * T, then run
the sampler from there to 0. The result stays close to the input at low strength and
becomes a fresh sample as strength goes to 1. A prompt to a text model steers the way
back (image-to-image with a prompt, as Stable Diffusion's img2img).

Denoising an image with known Gaussian noise y = x + s * n: in the variance-exploding
frame the model's noisy inputs are exactly x + sigma * n, so y *is* a sample at
sigma = s (in model units, [-1, 1]), and the reverse process starts there with no added
noise. One step to 0 returns D(y, s), the model's estimate of E[x | y] (the MMSE
denoiser, Tweedie's formula); more steps give a sharper sample instead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from difforge.io.formats import given_back
from difforge.sampling import randn_like
from difforge.tasks.common import from_model, prepare, read_input, to_model


def strength_sigma(pipe, strength: float) -> float:
    """SDEdit's starting noise level: the schedule's sigma at timestep strength * (T - 1)."""
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    t = torch.tensor(strength * (pipe.process.timesteps - 1), dtype=torch.float64)
    return float(pipe.process.t_to_sigma(t))


@torch.no_grad()
def restore(
    pipe,
    image,
    strength: float,
    *,
    labels: torch.Tensor | None = None,
    prompts: Sequence[str] | None = None,
    negative_prompt: str | None = None,
    cfg: float | None = None,
    sampler: str | None = None,
    steps: int | None = None,
    seed: int = 0,
    callback: Callable[[dict], None] | None = None,
    **options,
) -> torch.Tensor:
    """SDEdit: noise `image` (N, C, H, W, [-1, 1], native size) to `strength` in (0, 1]
    and sample back. `steps` counts the sampler's full-strength grid (default as
    `Pipeline.sigmas`), of which the levels below the start are run; image i uses seed + i.
    `image` may also be any kind `Pipeline.generate` returns (uint8 tensor, numpy array,
    PIL images); the result is float in [-1, 1], or uint8 pixels of the kind given.

    With a text model, `prompts` (one per image, or one for all) steer the sample back
    (SDEdit with a prompt: image-to-image), guided with scale `cfg` away from the empty
    prompt or `negative_prompt`; without prompts the empty prompt (unconditional).
    """
    image, given = read_input(pipe, image)
    sigma = strength_sigma(pipe, strength)
    run = prepare(pipe, len(image), labels=labels, prompts=prompts, negative_prompt=negative_prompt, cfg=cfg,
                  sampler=sampler or "ddim", steps=steps, seed=seed, options=options, sigma_start=sigma)
    x0 = to_model(pipe, image).to(pipe.device)
    x = run.sample(x0 + sigma * randn_like(x0, run.gens), callback)
    return given_back(from_model(pipe, x.float().cpu()), given)


def pixel_sigma_to_model(sigma: float) -> float:
    """Noise std in [0, 1] pixel units -> model units ([-1, 1] data): twice as large."""
    return 2.0 * sigma


@torch.no_grad()
def denoise(
    pipe,
    image,
    sigma: float,
    *,
    labels: torch.Tensor | None = None,
    prompts: Sequence[str] | None = None,
    negative_prompt: str | None = None,
    cfg: float | None = None,
    sampler: str | None = None,
    steps: int | None = None,
    seed: int = 0,
    callback: Callable[[dict], None] | None = None,
    **options,
) -> torch.Tensor:
    """Remove Gaussian noise of known std `sigma` (in [0, 1] pixel units) from `image`
    (N, C, H, W, [-1, 1], native size, not clipped for best results).

    The reverse process starts at the matching level 2 * sigma with `image` as x.
    `steps=1` (the default) is one denoiser call: the posterior-mean estimate, best in
    PSNR. More steps follow the sampler's grid below that level (sharper, lower PSNR).
    `image` may also be uint8 pixels (tensor, numpy array, PIL images); the result is
    then of the same kind.
    """
    image, given = read_input(pipe, image)
    if not sigma > 0:
        raise ValueError(f"noise sigma must be > 0, got {sigma}")
    sampler = sampler or "ddim"
    s = pixel_sigma_to_model(sigma)
    if s > pipe.process.sigma_max:
        raise ValueError(f"noise sigma {sigma} is above this model's largest, "
                         f"{pipe.process.sigma_max / 2:.4g} (pixel units)")
    run = prepare(pipe, len(image), labels=labels, prompts=prompts, negative_prompt=negative_prompt, cfg=cfg,
                  sampler=sampler, steps=steps, seed=seed, options=options, sigma_start=s)
    if steps is None or steps == 1:  # one call: the posterior mean
        run.sigmas = torch.tensor([s, 0.0], dtype=torch.float64)
    x = to_model(pipe, image).to(pipe.device)
    pad = to_model(pipe, torch.zeros_like(image[:, :1]), fill=1.0).to(pipe.device)
    if pad.any():  # padding is clean -1: give it the same noise as the image
        x = x + pad * s * randn_like(x, run.gens)
    return given_back(from_model(pipe, run.sample(x, callback).float().cpu()), given)
