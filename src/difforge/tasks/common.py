"""What every image task shares: checking inputs, moving images between the data's native
size and the model's input size, the sampler set-up, and a step-by-step driver.

The driver (`run_steps`) calls a sampler from `difforge.sampling` on one sigma interval
at a time and lets the task change x between intervals (paste the known pixels, keep the
low frequencies, jump back up in noise). It never re-implements a sampler step. A
multistep solver (dpmpp-2m/3m) restarted on every interval keeps no history, so under a
per-step hook it runs as its first-order (DDIM) step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from difforge.io.formats import Given, as_float
from difforge.sampling import checked_sampler, per_sample_generators, randn_like

Hook = Callable[[torch.Tensor, int, torch.Tensor], torch.Tensor]


def check_images(pipe, image: torch.Tensor, what: str = "image") -> torch.Tensor:
    """A float (N, C, H, W) batch at the model's native size and channels; clear errors."""
    return pipe.card.check_images(image, what)


EDITING = "editing an image (inpaint, restore, denoise, interpolate, upscale)"


def read_input(pipe, image, what: str = "image") -> tuple[torch.Tensor, Given]:
    """Any image batch a task takes (float tensor in [-1, 1], uint8 tensor, uint8 numpy
    array, PIL images: `difforge.io.formats`) -> (checked float batch, what was given)."""
    pipe.require_pixel_space(EDITING)
    x, given = as_float(image, pipe.card.channels, what)
    return check_images(pipe, x, what), given


def to_model(pipe, x: torch.Tensor, fill: float = -1.0) -> torch.Tensor:
    """Native-size float images -> the model's input size (`ModelCard.to_model`)."""
    return pipe.card.to_model(x, fill)


def from_model(pipe, x: torch.Tensor) -> torch.Tensor:
    """Model-size images -> native size, float in [-1, 1] (`ModelCard.from_model`)."""
    return pipe.card.from_model(x)


def native_view(pipe, x: torch.Tensor) -> torch.Tensor:
    """The native-size region of a model-size tensor, as a view (writes go through)."""
    size, native = pipe.card.image_size, pipe.card.native_size
    if size < native:
        raise ValueError(f"this task needs a model input size >= the data's size ({size} < {native})")
    top = (size - native) // 2
    return x[..., top : top + native, top : top + native]


def setup(pipe, n: int, labels, cfg, sampler: str, options: dict, clip: bool = True, *, prompts=None,
          negative_prompt: str | None = None):
    """(denoiser, sample_fn, cond) after checking the sampler's options: the conditioning
    and the guidance are `Pipeline.generate`'s (`Pipeline.condition`, `Pipeline.denoiser`),
    one label or prompt standing for all n images. Without labels or prompts the model runs
    unconditionally (a class model's null label, a text model's empty prompt), unguided
    unless `cfg` or a negative prompt is given. Tasks edit pixels: a latent model is refused."""
    pipe.require_pixel_space(EDITING)
    sample_fn = checked_sampler(sampler, options)
    _, cond = pipe.condition(n, labels, prompts)
    if cfg is None and labels is None and prompts is None and negative_prompt is None and pipe.default_cfg:
        cfg = 1.0
    den = pipe.denoiser(cfg, clip, negative_prompt=negative_prompt).to(pipe.device)
    return den, sample_fn, cond


def generators(seed: int, n: int) -> list[torch.Generator]:
    """Image i draws its noise from seed + i, whatever the batch."""
    return per_sample_generators(range(seed, seed + n))


def prior_std(pipe, sigma: float) -> float:
    """Standard deviation of pure noise at level `sigma` for the pipeline's model."""
    return pipe.model.prior_std(sigma)


def grid_from(pipe, sampler: str, steps: int | None, sigma_start: float) -> torch.Tensor:
    """The sampler's grid (as `Pipeline.sigmas`) started at `sigma_start`: sigma_start
    followed by the grid's levels below it, ending in 0 (SDEdit's truncated reverse process)."""
    if not 0 < sigma_start <= pipe.process.sigma_max * (1 + 1e-9):
        raise ValueError(f"noise level {sigma_start:.4g} outside the model's range (0, {pipe.process.sigma_max:.4g}]")
    full = pipe.sigmas(sampler, steps)
    below = full[full < sigma_start * (1 - 1e-6)]
    return torch.cat([torch.tensor([sigma_start], dtype=torch.float64), below])


def counted(callback, total: int, offset: int = 0):
    """`callback` with "total" in every step's dict, the sampler steps of the whole task
    (one call each: what a progress bar counts to), and "i" shifted by `offset`."""
    if callback is None:
        return None

    def cb(d: dict) -> None:
        callback({**d, "i": offset + d["i"], "total": total})

    return cb


def run_steps(
    sample_fn, den, x: torch.Tensor, sigmas: torch.Tensor, path: Iterable[tuple[int, int]], *,
    gens, cond, callback=None, options: dict | None = None, after_step: Hook | None = None,
) -> torch.Tensor:
    """Walk `path`, pairs (a, b) of indices into `sigmas`. b = a + 1: one sampler step
    from sigmas[a] to sigmas[b], then `after_step(x, b, sigmas[b])`. b < a: jump back up
    by forward diffusion, x + sqrt(sigma_b^2 - sigma_a^2) * z (the VE frame's q(x_b | x_a)),
    as RePaint's resampling does. The callback sees the sampler's dicts, numbered by move,
    with "total" the number of sampler steps."""
    options = options or {}
    total = sum(b == a + 1 for a, b in path)
    for k, (a, b) in enumerate(path):
        if b == a + 1:
            x = sample_fn(den, x, sigmas[a : b + 1], generator=gens, callback=counted(callback, total, k), cond=cond,
                          **options)
            if after_step is not None:
                x = after_step(x, b, sigmas[b])
        elif b < a:
            lo, hi = float(sigmas[a]), float(sigmas[b])
            x = x + (hi * hi - lo * lo) ** 0.5 * randn_like(x, gens)
        else:
            raise ValueError(f"bad step ({a}, {b}) in the sampling path")
    return x


def straight(n: int) -> list[tuple[int, int]]:
    """The plain path 0 -> 1 -> ... -> n."""
    return [(i, i + 1) for i in range(n)]


@dataclass
class TaskRun:
    """What a task runs: the guided denoiser, the sampler with its options, the
    conditioning, the sigma grid and one generator per image. `steps` is how many
    sampler steps a straight run takes (what a progress bar counts to)."""

    den: torch.nn.Module
    sample_fn: Callable
    cond: Any
    sigmas: torch.Tensor
    gens: list[torch.Generator]
    options: dict = field(default_factory=dict)

    @property
    def steps(self) -> int:
        return len(self.sigmas) - 1

    def noise(self, like: torch.Tensor, pipe) -> torch.Tensor:
        """Pure noise at the grid's first level, shaped like `like`."""
        return randn_like(like, self.gens) * prior_std(pipe, float(self.sigmas[0]))

    def sample(self, x: torch.Tensor, callback=None) -> torch.Tensor:
        """One straight run of the sampler over the whole grid."""
        return self.sample_fn(self.den, x, self.sigmas, generator=self.gens, callback=counted(callback, self.steps),
                              cond=self.cond, **self.options)

    def walk(self, x: torch.Tensor, path, callback=None, after_step: Hook | None = None) -> torch.Tensor:
        """`run_steps` along `path` (a hook between steps, jumps back up)."""
        return run_steps(self.sample_fn, self.den, x, self.sigmas, path, gens=self.gens, cond=self.cond,
                         callback=callback, options=self.options, after_step=after_step)


def prepare(pipe, n: int, *, labels, cfg, sampler: str, steps: int | None, seed: int, options: dict,
            sigma_start: float | None = None, clip: bool = True, prompts=None,
            negative_prompt: str | None = None) -> TaskRun:
    """The set-up every task shares (after `setup`'s checks): the sampler's grid, from
    `sigma_start` down when given (SDEdit, denoising), and per-image generators."""
    den, sample_fn, cond = setup(pipe, n, labels, cfg, sampler, options, clip, prompts=prompts,
                                 negative_prompt=negative_prompt)
    sigmas = pipe.sigmas(sampler, steps) if sigma_start is None else grid_from(pipe, sampler, steps, sigma_start)
    return TaskRun(den, sample_fn, cond, sigmas, generators(seed, n), pipe.sampler_defaults(sampler, options))
