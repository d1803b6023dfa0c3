"""Zero-shot super-resolution with an unconditional model: ILVR (Choi et al. 2021,
"ILVR: conditioning method for denoising diffusion probabilistic models").

After every sampler step to level sigma, the low frequencies of x are replaced by those
of the reference noised to the same level: x <- x - P(x) + P(y_up + sigma * z), where
P = U D is a low-pass projection (D: mean over `scale` x `scale` blocks, U: repeat each
value over its block, so D U = I and P P = P). At sigma = 0 the image is made consistent:
clamped to [-1, 1] with one offset per block chosen so that D(x) equals the low-resolution
input (`fit_block_means`), while the model has filled in the high frequencies.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from difforge.models.conditioning import downsample  # D: the mean over each scale x scale block
from difforge.sampling import randn_like
from difforge.tasks.common import check_images, from_model, native_view, prepare, straight


def upsample(x: torch.Tensor, scale: int) -> torch.Tensor:
    """U: each value repeated over its block (nearest); D(U(v)) == v exactly."""
    return x.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)


def low_pass(x: torch.Tensor, scale: int) -> torch.Tensor:
    """P = U D, ILVR's phi_N with N = scale."""
    return upsample(downsample(x, scale), scale)


def fit_block_means(x: torch.Tensor, low: torch.Tensor, scale: int, iters: int = 40) -> torch.Tensor:
    """clamp(x + c, -1, 1) with one offset c per block, found by bisection, so that the block
    means equal `low` (in [-1, 1]): the image stays in range and consistent with the input."""
    lo = torch.full_like(low, -2.0)
    hi = torch.full_like(low, 2.0)
    for _ in range(iters):  # mean(clamp(x + c)) is non-decreasing in c
        c = (lo + hi) / 2
        too_high = downsample((x + upsample(c, scale)).clamp(-1, 1), scale) > low
        hi, lo = torch.where(too_high, c, hi), torch.where(too_high, lo, c)
    return (x + upsample((lo + hi) / 2, scale)).clamp(-1, 1)


def check_low_res(pipe, low: torch.Tensor, scale: int) -> torch.Tensor:
    size = pipe.card.native_size
    if scale < 2 or size % scale:
        raise ValueError(f"scale must be >= 2 and divide the model's size {size}, got {scale}")
    if not isinstance(low, torch.Tensor) or low.ndim != 4:
        raise ValueError(f"low-resolution image must be a batch (N, C, h, w), got {getattr(low, 'shape', low)}")
    if tuple(low.shape[-2:]) != (size // scale, size // scale):
        raise ValueError(f"low-resolution image is {low.shape[-2]}x{low.shape[-1]}; "
                         f"x{scale} to this model's {size}x{size} needs {size // scale}x{size // scale}")
    return check_images(pipe, upsample(low.float(), scale), "low-resolution image")


@torch.no_grad()
def superres_ilvr(
    pipe,
    low: torch.Tensor,
    scale: int,
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
    """Upscale `low` (N, C, size/scale, size/scale) in [-1, 1] by `scale` to the model's
    native size with ILVR. `sampler` (default ddpm) runs `steps` (default 50) steps; image
    i uses seed + i. Returns (N, C, size, size) whose block means equal `low`."""
    ref = check_low_res(pipe, low, scale)
    low = downsample(ref, scale).to(pipe.device)  # == low, as float
    run = prepare(pipe, len(ref), labels=labels, prompts=prompts, negative_prompt=negative_prompt, cfg=cfg,
                  sampler=sampler or "ddpm", steps=steps or 50, seed=seed, options=options)
    gens = run.gens
    ref = ref.to(pipe.device)

    def keep_low(x: torch.Tensor, _i: int, sigma: torch.Tensor) -> torch.Tensor:
        s = float(sigma)
        view = native_view(pipe, x)
        if s == 0:  # the end: in range and exactly consistent with the input
            view.copy_(fit_block_means(view, low, scale))
            return x
        target = ref + s * randn_like(ref, gens)
        view += low_pass(target, scale) - low_pass(view, scale)
        return x

    size, c = pipe.card.image_size, pipe.card.channels
    x = run.noise(torch.empty(len(ref), c, size, size, device=pipe.device), pipe)
    x = run.walk(x, straight(run.steps), callback, after_step=keep_low)
    return from_model(pipe, x.float().cpu())
