"""Samplers: plain functions `sample_xxx(denoiser, x, sigmas, *, generator, callback, **options)`.

Every sampler works with every denoiser D(x, sigma, cond); guidance and clipping are
wrappers around D (`guidance.py`), not forks of the loop.
"""

from difforge.sampling.ddim import sample_ddim
from difforge.sampling.ddpm import sample_ddpm
from difforge.sampling.guidance import CFGDenoiser, ClampDenoiser
from difforge.sampling.noise import per_sample_generators, randn_like

SAMPLERS = {"ddpm": sample_ddpm, "ddim": sample_ddim}


def get_sampler(name: str):
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; expected one of {sorted(SAMPLERS)}")
    return SAMPLERS[name]


__all__ = [
    "SAMPLERS",
    "get_sampler",
    "sample_ddpm",
    "sample_ddim",
    "CFGDenoiser",
    "ClampDenoiser",
    "per_sample_generators",
    "randn_like",
]
