"""Heun's second-order sampler with optional stochastic churn (Karras et al. 2022, Algorithm 2)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from difforge.sampling.euler import ode_derivative
from difforge.sampling.noise import Generators, randn_like


@torch.no_grad()
def sample_heun(
    denoiser: Callable,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    generator: Generators = None,
    callback: Callable[[dict], None] | None = None,
    cond: torch.Tensor | None = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = math.inf,
    s_noise: float = 1.0,
) -> torch.Tensor:
    """Karras et al. (2022), Algorithm 2: Heun's method (explicit trapezoid) on the
    probability-flow ODE, with optional "churn".

    Each step i first raises the noise level to sigma_hat = sigma_i * (1 + gamma_i) by
    adding noise of std s_noise * sqrt(sigma_hat^2 - sigma_i^2), where
    gamma_i = min(s_churn / N, sqrt(2) - 1) for sigma_i in [s_tmin, s_tmax], else 0
    (lines 4-6); s_churn = 0 (default) is the deterministic second-order ODE solver. It
    then takes an Euler step to sigma_{i+1} and corrects it with the slope there
    (lines 7-11). The step to sigma = 0 is a plain Euler step (line 9), so N steps cost
    2N - 1 denoiser calls.

    The callback runs once per step, with x at sigma_hat ("sigma") and D(x, sigma_hat).
    """
    if s_churn < 0 or s_noise < 0:
        raise ValueError(f"s_churn and s_noise must be >= 0, got {s_churn}, {s_noise}")
    n = len(sigmas) - 1
    gamma_max = min(s_churn / max(n, 1), math.sqrt(2) - 1)
    for i in range(n):
        s, t = float(sigmas[i]), float(sigmas[i + 1])
        gamma = gamma_max if s_tmin <= s <= s_tmax else 0.0
        s_hat = s * (1 + gamma)
        if gamma > 0:
            x = x + (s_noise * math.sqrt(s_hat**2 - s**2)) * randn_like(x, generator)
        sigma_hat = torch.tensor(s_hat, dtype=torch.float64)
        denoised = denoiser(x, sigma_hat, cond)
        if callback is not None:
            callback({"i": i, "x": x, "sigma": sigma_hat, "sigma_next": sigmas[i + 1].to(torch.float64),
                      "denoised": denoised})
        d = ode_derivative(x, s_hat, denoised)
        x_next = x + (t - s_hat) * d
        if t > 0:
            d_next = ode_derivative(x_next, t, denoiser(x_next, sigmas[i + 1].to(torch.float64), cond))
            x_next = x + (t - s_hat) * 0.5 * (d + d_next)  # Alg. 2, line 11
        x = x_next
    return x
