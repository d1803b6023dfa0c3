"""Interpolation between two images through the model's latent noise.

DDIM inversion (Song et al. 2021, Section 4.3; Dhariwal & Nichol 2021, Appendix F): the
deterministic DDIM sampler (eta = 0, an Euler step of the probability-flow ODE) run on
an increasing sigma grid maps an image to its latent at sigma_max; run down it maps the
latent back. Both images are inverted, their latents joined by spherical linear
interpolation (slerp, Shoemake 1985; as in DDIM's Figure 6) and every in-between latent
is decoded. Both directions are `difforge.sampling.sample_ddim` on the same grid.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from difforge.io.formats import given_back
from difforge.sampling import sample_ddim
from difforge.tasks.common import check_images, counted, from_model, read_input, setup, to_model

DEFAULT_STEPS = 50


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation per sample between a and b (N, ...); t in [0, 1].

    The angle is between the flattened vectors; the norm is interpolated linearly (so the
    ends are exact and nearly parallel vectors fall back to linear interpolation)."""
    fa, fb = a.flatten(1).double(), b.flatten(1).double()
    na, nb = fa.norm(dim=1, keepdim=True), fb.norm(dim=1, keepdim=True)
    cos = ((fa / na) * (fb / nb)).sum(1, keepdim=True).clamp(-1, 1)
    theta = torch.arccos(cos)
    sin = torch.sin(theta)
    lerp = sin.abs() < 1e-6
    wa = torch.where(lerp, 1 - t, torch.sin((1 - t) * theta) / torch.where(lerp, 1.0, sin))
    wb = torch.where(lerp, t, torch.sin(t * theta) / torch.where(lerp, 1.0, sin))
    unit = wa * fa / na + wb * fb / nb
    unit = unit / unit.norm(dim=1, keepdim=True)
    out = unit * ((1 - t) * na + t * nb)
    return out.view_as(a).to(a.dtype)


def inversion_grid(pipe, steps: int | None) -> torch.Tensor:
    """Karras et al.'s rho = 7 grid from sigma_min to sigma_max (increasing, no 0): the
    image is taken as x at sigma_min (about 0.01 for DDPM's linear schedule)."""
    return pipe.sigmas("ddim", steps or DEFAULT_STEPS, "karras")[:-1].flip(0)


@torch.no_grad()
def invert(pipe, image: torch.Tensor, *, labels=None, prompts=None, cfg: float | None = None,
           steps: int | None = None, callback: Callable[[dict], None] | None = None) -> torch.Tensor:
    """DDIM inversion: images (N, C, H, W, [-1, 1], native size) -> latents at sigma_max
    (model size). Exact up to the ODE discretisation; guidance (cfg > 1) degrades it."""
    image = check_images(pipe, image)
    den, _, cond = setup(pipe, len(image), labels, cfg, "ddim", {}, clip=False, prompts=prompts)
    x = to_model(pipe, image).to(pipe.device)
    return sample_ddim(den, x, inversion_grid(pipe, steps), callback=callback, cond=cond)


@torch.no_grad()
def decode(pipe, latent: torch.Tensor, *, labels=None, prompts=None, cfg: float | None = None,
           steps: int | None = None, callback: Callable[[dict], None] | None = None) -> torch.Tensor:
    """The inverse of `invert`: DDIM from sigma_max down the same grid, then to 0."""
    den, _, cond = setup(pipe, len(latent), labels, cfg, "ddim", {}, clip=False, prompts=prompts)
    sigmas = torch.cat([inversion_grid(pipe, steps).flip(0), torch.zeros(1, dtype=torch.float64)])
    return from_model(pipe, sample_ddim(den, latent, sigmas, callback=callback, cond=cond).float().cpu())


@torch.no_grad()
def interpolate(
    pipe,
    a,
    b,
    frames: int = 8,
    *,
    labels: torch.Tensor | None = None,
    prompts: Sequence[str] | None = None,
    cfg: float | None = None,
    steps: int | None = None,
    callback: Callable[[dict], None] | None = None,
) -> torch.Tensor:
    """`frames` images from a to b (both (N, C, H, W), [-1, 1], native size), the ends
    included: returns (frames, N, C, H, W). Deterministic (no seed). A class-conditional
    model runs unconditionally unless `labels` are given, a text model unless `prompts`
    are (one per pair, or one for all; then with guidance `cfg`, default 1: none, which
    keeps the inversion exact). The callback sees the steps of both
    inversions and of the decoding, numbered through. `a` and `b` may also be uint8 pixels
    (tensors, numpy arrays, PIL images, both of one kind): the frames are then uint8 of that
    kind, stacked along a first axis (a list of frames for PIL)."""
    if frames < 2:
        raise ValueError(f"frames must be >= 2, got {frames}")
    (a, given), (b, given_b) = read_input(pipe, a, "image a"), read_input(pipe, b, "image b")
    if given != given_b:
        raise ValueError(f"images a and b are of different kinds ({given.kind} and {given_b.kind})")
    if a.shape != b.shape:
        raise ValueError(f"images a {tuple(a.shape)} and b {tuple(b.shape)} differ in shape")
    if (labels is not None or prompts is not None) and cfg is None:
        cfg = 1.0
    inverse = len(inversion_grid(pipe, steps)) - 1  # steps of one inversion; decoding takes one more
    total = 3 * inverse + 1
    za = invert(pipe, a, labels=labels, prompts=prompts, cfg=cfg, steps=steps, callback=counted(callback, total))
    zb = invert(pipe, b, labels=labels, prompts=prompts, cfg=cfg, steps=steps,
                callback=counted(callback, total, inverse))
    ts = torch.linspace(0, 1, frames, dtype=torch.float64).tolist()
    latents = torch.cat([slerp(za, zb, t) for t in ts])  # (frames * N, C, S, S)
    lab = None if labels is None else torch.as_tensor(labels).reshape(-1).expand(len(a)).repeat(frames)
    text = None if prompts is None else [p for _ in range(frames) for p in list(prompts) * (len(a) // len(prompts))]
    out = decode(pipe, latents, labels=lab, prompts=text, cfg=cfg, steps=steps,
                 callback=counted(callback, total, 2 * inverse))
    return given_back(out.view(frames, *a.shape), given)
