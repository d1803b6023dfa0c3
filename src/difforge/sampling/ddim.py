"""DDIM sampling (Song, Meng & Ermon 2021) in noise-level space."""

from __future__ import annotations

from collections.abc import Callable

import torch

from difforge.sampling.noise import Generators, randn_like


@torch.no_grad()
def sample_ddim(
    denoiser: Callable,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    generator: Generators = None,
    callback: Callable[[dict], None] | None = None,
    cond: torch.Tensor | None = None,
    eta: float = 0.0,
) -> torch.Tensor:
    """DDIM, Song et al. (2021) Eq. 12, with stochasticity eta (0: deterministic).

    In the VP frame x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t - s_eta^2) eps + s_eta z with
    s_eta = eta * sqrt((1 - ab_t) / (1 - ab_s)) * sqrt(1 - ab_s / ab_t) (their Eq. 16);
    here divided by sqrt(ab_t), so with eta = 0 a step is x0 + sigma_t * eps, an Euler
    step of the probability-flow ODE in sigma (Karras et al. 2022, Section 3).
    """
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    n = len(sigmas) - 1
    for i in range(n):
        s, t = sigmas[i].to(torch.float64), sigmas[i + 1].to(torch.float64)
        x0 = denoiser(x, s, cond)
        eps = (x - x0) / s.to(x.dtype)
        ab_s, ab_t = 1 / (1 + s * s), 1 / (1 + t * t)
        s_eta = eta * ((1 - ab_t) / (1 - ab_s) * (1 - ab_s / ab_t)).clamp(min=0).sqrt()
        c_eps = (1 - ab_t - s_eta**2).clamp(min=0).sqrt() / ab_t.sqrt()
        x_next = x0 + c_eps.to(x.dtype) * eps
        if eta > 0 and t > 0:
            x_next = x_next + (s_eta / ab_t.sqrt()).to(x.dtype) * randn_like(x, generator)
        if callback is not None:
            callback({"i": i, "x": x, "sigma": s, "sigma_next": t, "denoised": x0})
        x = x_next
    return x
