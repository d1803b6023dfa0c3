"""Inpainting with a model not trained for it: RePaint and blended replacement.

Both replace the known pixels after every sampler step with the ground truth noised to
the step's level, x <- m * x + (1 - m) * (y + sigma_next * z) (the mechanism of Blended
Diffusion, Avrahami et al. 2022, on pixels). RePaint (Lugmayr et al. 2022, Algorithm 1)
adds resampling: every `jump_length` steps it diffuses x back up `jump_length` levels and
samples them again, `resample` times in all, so the generated region has time to agree
with the known one. With resample = 1 RePaint is blended replacement. A class or text
model conditions the whole image on the label or prompt, so the filled region follows it
(with a prompt: text-guided blending, as Blended Diffusion does and GLIDE with a model
not fine-tuned for inpainting).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from difforge.io.formats import given_back
from difforge.sampling import randn_like
from difforge.tasks.common import from_model, prepare, read_input, straight, to_model
from difforge.tasks.masks import check_mask

METHODS = ("repaint", "blend")
DEFAULT_STEPS = 50  # sampler steps of the descent, before resampling


def repaint_path(n: int, jump_length: int = 10, resample: int = 10) -> list[tuple[int, int]]:
    """Moves (a, b) over grid indices 0 (most noise) .. n (clean) for RePaint's schedule:
    down one step at a time; at every multiple of `jump_length` above the last level, go
    back up `jump_length` levels, `resample - 1` times, then continue down
    (Lugmayr et al. 2022, Section 4.2, "jumps" j and resamplings r)."""
    if jump_length < 1:
        raise ValueError(f"jump_length must be >= 1, got {jump_length}")
    if resample < 1:
        raise ValueError(f"resample must be >= 1, got {resample}")
    path, i, done = [], 0, {}
    while i < n:
        path.append((i, i + 1))
        i += 1
        if resample > 1 and i < n and i % jump_length == 0 and i >= jump_length and done.get(i, 0) < resample - 1:
            done[i] = done.get(i, 0) + 1
            path.append((i, i - jump_length))
            i -= jump_length
    return path


@torch.no_grad()
def inpaint(
    pipe,
    image,
    mask: torch.Tensor,
    *,
    method: str = "repaint",
    labels: torch.Tensor | None = None,
    prompts: Sequence[str] | None = None,
    negative_prompt: str | None = None,
    cfg: float | None = None,
    sampler: str | None = None,
    steps: int | None = None,
    seed: int = 0,
    callback: Callable[[dict], None] | None = None,
    jump_length: int = 5,
    resample: int = 5,
    **options,
) -> torch.Tensor:
    """Fill the pixels where `mask` is 1, keep those where it is 0.

    `image` (N, C, H, W) in [-1, 1] at the model's native size, or the same pixels as any
    kind `Pipeline.generate` returns (uint8 tensor, numpy array, PIL images; see
    `difforge.io.formats`); `mask` (N, 1, H, W) or one (1, 1, H, W) for all. `method`:
    "repaint" (with `jump_length` and `resample`) or
    "blend" (replacement only). `sampler` (default ddpm: RePaint's stochastic steps) runs
    `steps` (default 50) steps on its grid; `options` go to the sampler. Image i uses
    seed + i. Returns (N, C, H, W) in [-1, 1] equal to `image` where the mask is 0,
    as the kind of image given (uint8 pixels for every kind but a float tensor).

    A class model fills in class `labels`; a text model fills in what `prompts` say (one
    per image, or one for all; without prompts, the empty prompt: unconditional), guided
    with scale `cfg` away from the empty prompt or `negative_prompt`: text-guided blending
    as in Blended Diffusion and GLIDE's inpainting with a model not trained for it.
    """
    if method not in METHODS:
        raise ValueError(f"unknown inpainting method {method!r}; expected one of {sorted(METHODS)}")
    image, given = read_input(pipe, image)
    mask = check_mask(mask, image)
    run = prepare(pipe, len(image), labels=labels, prompts=prompts, negative_prompt=negative_prompt, cfg=cfg,
                  sampler=sampler or "ddpm", steps=steps or DEFAULT_STEPS, seed=seed, options=options)
    path = repaint_path(run.steps, jump_length, resample) if method == "repaint" else straight(run.steps)

    dev = pipe.device
    known = to_model(pipe, image).to(dev)
    keep = 1 - to_model(pipe, mask, fill=0.0).to(dev)  # 1 where the pixel is known (padding too)
    gens = run.gens

    def paste(x: torch.Tensor, _i: int, sigma: torch.Tensor) -> torch.Tensor:
        s = float(sigma)
        noisy = known if s == 0 else known + s * randn_like(x, gens)
        return keep * noisy + (1 - keep) * x

    x = run.walk(run.noise(known, pipe), path, callback, after_step=paste)
    out = from_model(pipe, x.float().cpu())
    return given_back(mask * out + (1 - mask) * image, given)  # the known pixels exactly
