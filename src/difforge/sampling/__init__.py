"""Samplers: plain functions `sample_xxx(denoiser, x, sigmas, *, generator, callback, cond, **options)`.

Every sampler works with every denoiser D(x, sigma, cond); guidance and clipping are
wrappers around D (`guidance.py`), not forks of the loop. `sigmas` is a float64 grid of
decreasing noise levels ending in 0 (`difforge.diffusion.grids.sigma_grid`). The callback
gets {"i", "x", "sigma", "sigma_next", "denoised"} once per step.
"""

import inspect

from difforge.sampling.ddim import sample_ddim
from difforge.sampling.ddpm import sample_ddpm
from difforge.sampling.dpmpp import sample_dpmpp_2m, sample_dpmpp_2m_sde, sample_dpmpp_3m
from difforge.sampling.euler import sample_euler, sample_euler_ancestral
from difforge.sampling.guidance import CFGDenoiser, ClampDenoiser, DynamicThresholdDenoiser, KeepGivenDenoiser
from difforge.sampling.heun import sample_heun
from difforge.sampling.langevin import sample_langevin, sample_pc, sample_reverse_sde
from difforge.sampling.noise import per_sample_generators, randn_like

SAMPLERS = {
    "ddpm": sample_ddpm,
    "ddim": sample_ddim,
    "euler": sample_euler,
    "euler-a": sample_euler_ancestral,
    "heun": sample_heun,
    "dpmpp-2m": sample_dpmpp_2m,
    "dpmpp-2m-sde": sample_dpmpp_2m_sde,
    "dpmpp-3m": sample_dpmpp_3m,
    "langevin": sample_langevin,
    "reverse-sde": sample_reverse_sde,
    "pc": sample_pc,
}

_COMMON = {"denoiser", "x", "sigmas", "generator", "callback", "cond"}


def get_sampler(name: str):
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; expected one of {sorted(SAMPLERS)}")
    return SAMPLERS[name]


# Fewest steps at which these first-order stochastic samplers leave no visible noise on the
# models of docs/frameworks.md (Euler-Maruyama overshoots the variance by about du^2 / V per
# step); below it the images are mostly noise. The ODE and multistep samplers need no floor.
MIN_STEPS = {"langevin": 50, "reverse-sde": 100, "pc": 50}


def few_steps_warning(name: str, steps: int | None) -> str | None:
    """A one-line warning when `steps` is too few for sampler `name` (None: its default)."""
    floor = MIN_STEPS.get(name)
    if steps is None or floor is None or steps >= floor:
        return None
    return (f"{name} at {steps} steps leaves most of the noise in the images (it needs about {floor}+); for few "
            f"steps use dpmpp-2m-sde or ddim")


def sampler_options(name: str) -> dict[str, object]:
    """The sampler's own options (beyond the common signature) and their defaults."""
    params = inspect.signature(get_sampler(name)).parameters
    return {k: p.default for k, p in params.items() if k not in _COMMON}


def checked_sampler(name: str, options: dict):
    """The sampler `name` after checking that it takes every option in `options`: the one
    place sampler names and options are validated (API, tasks, commands, server)."""
    sample_fn = get_sampler(name)
    known = sampler_options(name)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"sampler {name!r} takes no option {unknown[0]!r}; its options: {sorted(known)}")
    return sample_fn


def samplers_taking(option: str) -> list[str]:
    """The samplers that take `option` (e.g. eta), for error messages."""
    return [name for name in SAMPLERS if option in sampler_options(name)]


__all__ = [
    "SAMPLERS",
    "get_sampler",
    "sampler_options",
    "checked_sampler",
    "samplers_taking",
    "few_steps_warning",
    "MIN_STEPS",
    "sample_ddpm",
    "sample_ddim",
    "sample_euler",
    "sample_euler_ancestral",
    "sample_heun",
    "sample_dpmpp_2m",
    "sample_dpmpp_2m_sde",
    "sample_dpmpp_3m",
    "sample_langevin",
    "sample_reverse_sde",
    "sample_pc",
    "CFGDenoiser",
    "ClampDenoiser",
    "KeepGivenDenoiser",
    "DynamicThresholdDenoiser",
    "per_sample_generators",
    "randn_like",
]
