"""DPM-Solver++ multistep samplers (Lu et al. 2022, "DPM-Solver++: Fast solver for guided
sampling of diffusion probabilistic models"), second and third order, data prediction.

In the VE frame x = x0 + sigma * n, with lambda = -log sigma (half the log-SNR) and
h = lambda_{i+1} - lambda_i = log(sigma_i / sigma_{i+1}), the exact solution of the
probability-flow ODE over one step is

    x_{i+1} = (sigma_{i+1} / sigma_i) x_i + sigma_{i+1} * int_{lambda_i}^{lambda_{i+1}} e^lambda D(lambda) dlambda

(their Eq. 9 divided by alpha_{i+1}). DPM-Solver++ expands D in lambda around lambda_i
using the denoised values of earlier steps (multistep), so each step costs one denoiser
call. The coefficients below are those of the reference implementation (DPM-Solver v2 /
diffusers' DPMSolverMultistepScheduler, "midpoint" solver type): with
phi_1 = 1 - e^{-h},
  1st order:  x' = (sigma'/sigma) x + phi_1 D0                        (= DDIM)
  2nd order:  ... + phi_1 / 2 * D1,            D1 = (m0 - m1) / r0      (Lu et al., Alg. 2)
  3rd order:  ... + (1 - phi_1 / h) D1 - ((h - phi_1) / h^2 - 1/2) D2
with r_k = h_{-k-1} / h the ratios of past to present step sizes.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from difforge.sampling.noise import Generators, randn_like

LOWER_ORDER_FINAL_BELOW = 15  # diffusers' rule: short grids lower the order at the end


def _step_order(order: int, i: int, n: int, sigma_next: float, lower_order_final: bool) -> int:
    """Order of step i of n: warm up from first order, first order into sigma = 0, and on
    grids shorter than 15 steps (lower_order_final) first / at most second order for the
    last two steps (as diffusers' DPMSolverMultistepScheduler)."""
    k = min(order, i + 1)
    short = lower_order_final and n < LOWER_ORDER_FINAL_BELOW
    if i == n - 1 and (sigma_next == 0 or short):
        return 1
    if i == n - 2 and short:
        return min(k, 2)
    return k


@torch.no_grad()
def _dpmpp_multistep(
    order: int,
    denoiser: Callable,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    generator: Generators,
    callback: Callable[[dict], None] | None,
    cond: torch.Tensor | None,
    lower_order_final: bool,
    eta: float = 0.0,
) -> torch.Tensor:
    assert order in (2, 3)
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    n = len(sigmas) - 1
    history: list[torch.Tensor] = []  # denoised values, newest last (m2, m1, m0)
    for i in range(n):
        s, t = float(sigmas[i]), float(sigmas[i + 1])
        denoised = denoiser(x, sigmas[i].to(torch.float64), cond)
        if callback is not None:
            callback({"i": i, "x": x, "sigma": sigmas[i].to(torch.float64),
                      "sigma_next": sigmas[i + 1].to(torch.float64), "denoised": denoised})
        history = (history + [denoised])[-order:]
        k = _step_order(order, i, n, t, lower_order_final)
        if t == 0:
            x = denoised  # first order with h = inf: sigma_next / sigma = 0, phi_1 = 1
            continue
        h = math.log(s / t)
        # eta > 0: the SDE variant. Over one step the noise-free part decays by e^{-eta h}
        # more and the data term weighs 1 - e^{-(1 + eta) h}; fresh noise of std
        # sigma_next * sqrt(1 - e^{-2 eta h}) keeps the marginal at sigma_next.
        phi_1 = -math.expm1(-(1.0 + eta) * h)  # eta = 0: 1 - sigma_next / sigma
        x = (t / s * math.exp(-eta * h)) * x + phi_1 * denoised
        if eta > 0:
            x = x + (t * math.sqrt(-math.expm1(-2.0 * eta * h))) * randn_like(x, generator)
        if k >= 2:
            m0, m1 = history[-1], history[-2]
            r0 = math.log(float(sigmas[i - 1]) / s) / h  # h_{-1} / h
            d1_0 = (m0 - m1) / r0
            if k == 2:
                x = x + (0.5 * phi_1) * d1_0
            else:
                m2 = history[-3]
                r1 = math.log(float(sigmas[i - 2]) / float(sigmas[i - 1])) / h  # h_{-2} / h
                d1_1 = (m1 - m2) / r1
                d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_2 = 1 - phi_1 / h  # = (e^{-h} - 1) / h + 1
                phi_3 = (h - phi_1) / h**2 - 0.5  # = (e^{-h} - 1 + h) / h^2 - 1/2
                x = x + phi_2 * d1 - phi_3 * d2
    return x


def sample_dpmpp_2m(
    denoiser: Callable,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    generator: Generators = None,
    callback: Callable[[dict], None] | None = None,
    cond: torch.Tensor | None = None,
    lower_order_final: bool = True,
) -> torch.Tensor:
    """DPM-Solver++(2M), Lu et al. (2022) Algorithm 2: second-order multistep, data
    prediction, one denoiser call per step. The first step is first order (no history) and
    so is the step into sigma = 0 (it returns D(x, sigma_{N-1})). Deterministic."""
    return _dpmpp_multistep(2, denoiser, x, sigmas, generator, callback, cond, lower_order_final)


def sample_dpmpp_3m(
    denoiser: Callable,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    generator: Generators = None,
    callback: Callable[[dict], None] | None = None,
    cond: torch.Tensor | None = None,
    lower_order_final: bool = True,
) -> torch.Tensor:
    """DPM-Solver++(3M): third-order multistep, data prediction (Lu et al. 2022; the
    third-order multistep update of their reference code, as in diffusers' solver_order=3
    and k-diffusion's dpmpp_3m_sde with eta = 0), one denoiser call per step. Warms up
    with first and second order, ends with a first-order
    step into sigma = 0; with `lower_order_final` on grids shorter than 15 steps the
    next-to-last step is second order. Deterministic."""
    return _dpmpp_multistep(3, denoiser, x, sigmas, generator, callback, cond, lower_order_final)


def sample_dpmpp_2m_sde(
    denoiser: Callable,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    generator: Generators = None,
    callback: Callable[[dict], None] | None = None,
    cond: torch.Tensor | None = None,
    eta: float = 1.0,
    lower_order_final: bool = True,
) -> torch.Tensor:
    """SDE-DPM-Solver++(2M): the second-order multistep data-prediction solver applied to
    the reverse diffusion SDE instead of the probability-flow ODE (Lu et al. 2022, the
    "sde-dpmsolver++" algorithm of their reference code and of diffusers'
    DPMSolverMultistepScheduler), one denoiser call per step. In the VE frame, with
    h = log(sigma_i / sigma_{i+1}) and eta = 1:

        x' = (sigma'/sigma) e^{-h} x + (1 - e^{-2h}) (D0 + D1 / 2) + sigma' sqrt(1 - e^{-2h}) z

    The fresh noise corrects errors of an imperfect denoiser that the ODE would carry to
    the end, so with few steps it usually matches ancestral DDPM quality better than the
    ODE solvers. eta scales the stochasticity (eta = 0 is `sample_dpmpp_2m`)."""
    return _dpmpp_multistep(2, denoiser, x, sigmas, generator, callback, cond, lower_order_final, eta)
