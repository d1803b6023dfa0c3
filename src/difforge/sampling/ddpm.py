"""DDPM ancestral sampling (Ho et al. 2020, Algorithm 2) in noise-level space."""

from __future__ import annotations

from collections.abc import Callable

import torch

from difforge.sampling.noise import Generators, randn_like

VARIANCES = ("large", "small")


def _bcast(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.to(x.dtype).to(x.device)


@torch.no_grad()
def sample_ddpm(
    denoiser: Callable,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    generator: Generators = None,
    callback: Callable[[dict], None] | None = None,
    cond: torch.Tensor | None = None,
    variance: str = "large",
) -> torch.Tensor:
    """DDPM ancestral sampler, Ho et al. (2020) Algorithm 2.

    Each step from sigma_s to sigma_t draws x_t from the Gaussian posterior
    q(x_t | x_s, x0 = D(x_s, sigma_s)) of the variance-preserving process whose signal
    fraction is alpha_bar = 1 / (1 + sigma^2), written in the VE frame (x_ve = x_vp /
    sqrt(alpha_bar)). On the full 1000-step grid this is exactly Algorithm 2:
    x_{t-1} = (x_t - beta_t / sqrt(1 - alpha_bar_t) * eps) / sqrt(alpha_t) + sigma_t z,
    with sigma_t^2 = beta_t (`variance="large"`, the article's choice) or the posterior
    variance beta~_t (`"small"`); the last step, to sigma = 0, adds no noise.
    On a shorter grid it is the respaced sampler of Nichol & Dhariwal (2021).
    """
    if variance not in VARIANCES:
        raise ValueError(f"unknown variance {variance!r}; expected one of {sorted(VARIANCES)}")
    n = len(sigmas) - 1
    for i in range(n):
        s, t = sigmas[i].to(torch.float64), sigmas[i + 1].to(torch.float64)
        x0 = denoiser(x, s, cond)
        ab_s, ab_t = 1 / (1 + s * s), 1 / (1 + t * t)
        alpha = ab_s / ab_t  # one-step alpha of the (respaced) chain
        beta = 1 - alpha
        # Posterior mean (Ho et al. 2020, Eq. 7) moved from the VP to the VE frame:
        # x0 keeps coefficient beta / (1 - ab_s); x picks up sqrt(ab_s / ab_t).
        c_x0 = beta / (1 - ab_s)
        c_x = alpha.sqrt() * (1 - ab_t) / (1 - ab_s) * (ab_s / ab_t).sqrt()
        x_next = _bcast(c_x0, x) * x0 + _bcast(c_x, x) * x
        if t > 0:
            var = beta if variance == "large" else (1 - ab_t) / (1 - ab_s) * beta
            x_next = x_next + _bcast(var.sqrt() / ab_t.sqrt(), x) * randn_like(x, generator)
        if callback is not None:
            callback({"i": i, "x": x, "sigma": s, "sigma_next": t, "denoised": x0})
        x = x_next
    return x
