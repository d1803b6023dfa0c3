"""Euler samplers in noise-level space (Karras et al. 2022, "Elucidating the design space").

In the variance-exploding frame x = x0 + sigma * n the probability-flow ODE is
dx/dsigma = (x - D(x, sigma)) / sigma (Karras et al. 2022, Eq. 1 with s(t) = 1, sigma(t) = t).
`sample_euler` takes Euler steps of it; `sample_euler_ancestral` adds fresh noise each step.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from difforge.sampling.noise import Generators, randn_like


def ode_derivative(x: torch.Tensor, sigma: float, denoised: torch.Tensor) -> torch.Tensor:
    """dx/dsigma of the probability-flow ODE: (x - D(x, sigma)) / sigma (Karras 2022, Alg. 1, line 4)."""
    return (x - denoised) / sigma


@torch.no_grad()
def sample_euler(
    denoiser: Callable,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    generator: Generators = None,
    callback: Callable[[dict], None] | None = None,
    cond: torch.Tensor | None = None,
) -> torch.Tensor:
    """Euler's method on the probability-flow ODE (Karras et al. 2022, Algorithm 1 without
    the Heun correction): x_{i+1} = x_i + (sigma_{i+1} - sigma_i) * (x_i - D(x_i, sigma_i)) / sigma_i.

    Deterministic (`generator` is unused), one denoiser call per step, first order. The
    last step to sigma = 0 returns D(x, sigma_{N-1}). Identical to DDIM with eta = 0.
    """
    n = len(sigmas) - 1
    for i in range(n):
        s, t = sigmas[i].to(torch.float64), sigmas[i + 1].to(torch.float64)
        denoised = denoiser(x, s, cond)
        d = ode_derivative(x, float(s), denoised)
        if callback is not None:
            callback({"i": i, "x": x, "sigma": s, "sigma_next": t, "denoised": denoised})
        x = x + float(t - s) * d
    return x


def ancestral_step(sigma: float, sigma_next: float, eta: float = 1.0) -> tuple[float, float]:
    """(sigma_down, sigma_up) for an ancestral step from sigma to sigma_next.

    The reverse of x_sigma = x_next + sqrt(sigma^2 - sigma_next^2) z has posterior variance
    sigma_up^2 = sigma_next^2 (sigma^2 - sigma_next^2) / sigma^2 (DDPM's beta-tilde in the VE
    frame; Ho et al. 2020, Eq. 7). eta scales sigma_up; the deterministic part of the step
    goes to sigma_down = sqrt(sigma_next^2 - sigma_up^2), so the marginal at sigma_next is kept.
    """
    if sigma_next == 0:
        return 0.0, 0.0
    up = eta * math.sqrt(max(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2, 0.0))
    up = min(up, sigma_next)
    return math.sqrt(sigma_next**2 - up**2), up


@torch.no_grad()
def sample_euler_ancestral(
    denoiser: Callable,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    generator: Generators = None,
    callback: Callable[[dict], None] | None = None,
    cond: torch.Tensor | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
) -> torch.Tensor:
    """Euler ancestral sampling: an Euler step of the probability-flow ODE from sigma_i
    down to sigma_down, then fresh Gaussian noise of std s_noise * sigma_up
    (`ancestral_step`), the ancestral sampler of Song et al. (2021, "Score-based generative
    modeling through SDEs", Section 4.2 / Appendix F) in the form of Karras et al. (2022)'s
    k-diffusion code. eta = 1 injects the full posterior noise, eta = 0 is `sample_euler`.
    """
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    n = len(sigmas) - 1
    for i in range(n):
        s, t = sigmas[i].to(torch.float64), sigmas[i + 1].to(torch.float64)
        denoised = denoiser(x, s, cond)
        if callback is not None:
            callback({"i": i, "x": x, "sigma": s, "sigma_next": t, "denoised": denoised})
        down, up = ancestral_step(float(s), float(t), eta)
        x = x + (down - float(s)) * ode_derivative(x, float(s), denoised)
        if up > 0:
            x = x + (s_noise * up) * randn_like(x, generator)
    return x
