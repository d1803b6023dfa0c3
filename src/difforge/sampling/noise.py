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
    the same image whatever batch it is sampled in.
    """
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    if len(generator) != x.shape[0]:
        raise ValueError(f"got {len(generator)} generators for a batch of {x.shape[0]}")
    return torch.cat(
        [
            torch.randn((1,) + tuple(x.shape[1:]), generator=g, device=x.device, dtype=x.dtype)
            for g in generator
        ]
    )
