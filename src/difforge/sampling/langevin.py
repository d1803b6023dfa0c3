"""Langevin-dynamics samplers: NCSN's annealed Langevin dynamics and the score SDEs'
reverse-SDE predictor with an optional Langevin corrector.

All work in the variance-exploding frame x = x0 + sigma n of any denoiser D, through
the score s(x, sigma) = (D(x, sigma) - x) / sigma^2 (Tweedie's formula). As in the other
samplers, the step to sigma = 0 returns D(x, sigma_last): the final denoising step of
Jolicoeur-Martineau et al. (2021) and Song & Ermon (2020).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from difforge.sampling.noise import Generators, randn_like


def _score(denoiser: Callable, x: torch.Tensor, sigma: torch.Tensor, cond) -> tuple[torch.Tensor, torch.Tensor]:
    denoised = denoiser(x, sigma, cond)
    return (denoised - x) / float(sigma) ** 2, denoised


def _norms(v: torch.Tensor) -> torch.Tensor:
    """Per-sample L2 norms, shaped to broadcast against v."""
    return v.flatten(1).norm(dim=1).view((-1,) + (1,) * (v.ndim - 1))


def langevin_corrector(denoiser: Callable, x: torch.Tensor, sigma: torch.Tensor, *, snr: float, steps: int,
                       generator: Generators = None, cond=None) -> torch.Tensor:
    """`steps` Langevin MCMC steps at noise level sigma with the step size set by a target
    signal-to-noise ratio: eps = 2 (snr ||z|| / ||s(x)||)^2, x <- x + eps s(x) + sqrt(2 eps) z
    (Song et al. 2021, Algorithm 4, per sample rather than per batch, so a sample does not
    depend on its batch). The rule is invariant to the VP/VE frame, so one corrector
    serves every process."""
    for _ in range(steps):
        score, _ = _score(denoiser, x, sigma, cond)
        z = randn_like(x, generator)
        eps = 2 * (snr * _norms(z) / _norms(score).clamp_min(1e-30)) ** 2
        x = x + eps * score + (2 * eps).sqrt() * z
    return x


@torch.no_grad()
def sample_langevin(
    denoiser: Callable,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    generator: Generators = None,
    callback: Callable[[dict], None] | None = None,
    cond: torch.Tensor | None = None,
    n_steps_each: int = 5,
    step_lr: float | None = None,
) -> torch.Tensor:
    """Annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1).

    For each noise level sigma_i of the grid (largest first), `n_steps_each` steps
    x <- x + (a_i / 2) s(x, sigma_i) + sqrt(a_i) z with a_i = step_lr * sigma_i^2 / sigma_L^2,
    sigma_L the smallest nonzero level of the grid; then x -> D(x, sigma_L) at the step
    to 0. n_steps_each * (len(sigmas) - 2) + 1 denoiser calls in all. Song & Ermon use
    step_lr = 2e-5 with sigma_L = 0.01; the default keeps their relative step
    a_i / sigma_i^2 = step_lr / sigma_L^2 = 0.2 on any grid: step_lr = 0.2 sigma_L^2.
    """
    positive = sigmas[sigmas > 0]
    sigma_last = float(positive[-1])
    step_lr = 0.2 * sigma_last**2 if step_lr is None else step_lr
    if n_steps_each < 1 or step_lr <= 0:
        raise ValueError(f"need n_steps_each >= 1 and step_lr > 0, got {n_steps_each}, {step_lr}")
    n = len(sigmas) - 1
    for i in range(n):
        s, t = sigmas[i].to(torch.float64), sigmas[i + 1].to(torch.float64)
        if t == 0:  # final denoising step
            denoised = denoiser(x, s, cond)
            if callback is not None:
                callback({"i": i, "x": x, "sigma": s, "sigma_next": t, "denoised": denoised})
            return denoised
        a = step_lr * (float(s) / sigma_last) ** 2
        denoised = None
        for _ in range(n_steps_each):
            score, d = _score(denoiser, x, s, cond)
            denoised = d if denoised is None else denoised
            x = x + (a / 2) * score + a**0.5 * randn_like(x, generator)
        if callback is not None:
            callback({"i": i, "x": x, "sigma": s, "sigma_next": t, "denoised": denoised})
    return x


@torch.no_grad()
def sample_reverse_sde(
    denoiser: Callable,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    generator: Generators = None,
    callback: Callable[[dict], None] | None = None,
    cond: torch.Tensor | None = None,
    snr: float = 0.0,
    corrector_steps: int = 1,
) -> torch.Tensor:
    """Reverse-time SDE sampling (Song et al. 2021, Section 4): Euler-Maruyama predictor,
    optionally with a Langevin corrector (predictor-corrector, their Algorithms 2 and 3).

    In the VE frame the forward process is dx = dw in the variance u = sigma^2, so the
    reverse SDE is dx = -s(x, sigma) du + dw-bar; one Euler-Maruyama step from sigma_i to
    sigma_{i+1} (du = sigma_{i+1}^2 - sigma_i^2) is
    x <- x + (sigma_i^2 - sigma_{i+1}^2) s(x, sigma_i) + sqrt(sigma_i^2 - sigma_{i+1}^2) z
    (Song et al.'s reverse-diffusion predictor; for VP models it is the same process seen
    in the VE frame). With snr > 0, `corrector_steps` Langevin steps (`langevin_corrector`)
    at each new level sigma_{i+1} follow every predictor step; Song et al. use snr = 0.16
    for VE and 0.01 for VP models on CIFAR-10. One denoiser call per step plus
    corrector_steps per corrected level.
    """
    if snr < 0 or corrector_steps < 0:
        raise ValueError(f"snr and corrector_steps must be >= 0, got {snr}, {corrector_steps}")
    n = len(sigmas) - 1
    for i in range(n):
        s, t = sigmas[i].to(torch.float64), sigmas[i + 1].to(torch.float64)
        score, denoised = _score(denoiser, x, s, cond)
        if callback is not None:
            callback({"i": i, "x": x, "sigma": s, "sigma_next": t, "denoised": denoised})
        if t == 0:
            x = denoised
            continue
        du = float(s**2 - t**2)
        x = x + du * score + du**0.5 * randn_like(x, generator)
        if snr > 0 and corrector_steps:
            x = langevin_corrector(denoiser, x, t, snr=snr, steps=corrector_steps, generator=generator, cond=cond)
    return x


@torch.no_grad()
def sample_pc(
    denoiser: Callable,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    generator: Generators = None,
    callback: Callable[[dict], None] | None = None,
    cond: torch.Tensor | None = None,
    snr: float = 0.16,
    corrector_steps: int = 1,
) -> torch.Tensor:
    """Predictor-corrector sampling (Song et al. 2021, Algorithms 2 and 3): the
    reverse-SDE predictor of `sample_reverse_sde` followed at each level by Langevin
    corrector steps at signal-to-noise ratio `snr` (their VE default, 0.16)."""
    return sample_reverse_sde(denoiser, x, sigmas, generator=generator, callback=callback, cond=cond, snr=snr,
                              corrector_steps=corrector_steps)
