"""Noise for samplers, drawn per sample so results do not depend on the batch size."""

from __future__ import annotations

from collections.abc import Sequence

import torch

Generators = torch.Generator | Sequence[torch.Generator] | None


def per_sample_generators(seeds: Sequence[int], device: str | torch.device = "cpu") -> list[torch.Generator]:
    """One generator per image, seeded with `seeds[i]`."""
    return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]


def randn_like(x: torch.Tensor, generator: Generators = None) -> torch.Tensor:
    """Standard normal noise shaped like `x`.

    With a list of generators, image i draws from generator i, so the same seed gives
    the same image whatever batch it is sampled in. Noise is drawn on the generator's
    device and moved to x's (CPU generators with CUDA samples give the CPU's numbers).
    """
    if generator is None or isinstance(generator, torch.Generator):
        return _randn(tuple(x.shape), generator, x)
    if len(generator) != x.shape[0]:
        raise ValueError(f"got {len(generator)} generators for a batch of {x.shape[0]}")
    return torch.cat([_randn((1,) + tuple(x.shape[1:]), g, x) for g in generator])


def _randn(shape: tuple[int, ...], g: torch.Generator | None, x: torch.Tensor) -> torch.Tensor:
    device = x.device if g is None else g.device
    return torch.randn(shape, generator=g, device=device, dtype=x.dtype).to(x.device)
