"""Wrappers around a denoiser: classifier-free guidance and clipping of x0."""

from __future__ import annotations

import torch
from torch import nn


class CFGDenoiser(nn.Module):
    """Classifier-free guidance (Ho & Salimans 2022) as a denoiser.

    D = D(x, sigma, null) + scale * (D(x, sigma, cond) - D(x, sigma, null)), both halves
    in one batched forward pass. scale = 1 is the plain conditional model, 0 the
    unconditional one. `cond=None` samples unconditionally (the null label).
    """

    def __init__(self, denoiser: nn.Module, scale: float, null_label: int):
        super().__init__()
        self.inner = denoiser
        self.scale = float(scale)
        self.null_label = int(null_label)

    def forward(self, x: torch.Tensor, sigma, cond: torch.Tensor | None = None) -> torch.Tensor:
        if cond is None:
            cond = torch.full((x.shape[0],), self.null_label, dtype=torch.long, device=x.device)
        if self.scale == 1.0:
            return self.inner(x, sigma, cond)
        null = torch.full_like(cond, self.null_label)
        sigma = torch.as_tensor(sigma, dtype=torch.float64, device=x.device)
        sigma2 = sigma.expand(x.shape[0]).repeat(2) if sigma.ndim == 0 else sigma.repeat(2)
        both = self.inner(torch.cat([x, x]), sigma2, torch.cat([cond, null]))
        d_cond, d_null = both.chunk(2)
        return d_null + self.scale * (d_cond - d_null)


class ClampDenoiser(nn.Module):
    """Static clipping of the x0 estimate to the data range [lo, hi]."""

    def __init__(self, denoiser: nn.Module, lo: float = -1.0, hi: float = 1.0):
        super().__init__()
        self.inner, self.lo, self.hi = denoiser, lo, hi

    def forward(self, x: torch.Tensor, sigma, cond: torch.Tensor | None = None) -> torch.Tensor:
        return self.inner(x, sigma, cond).clamp(self.lo, self.hi)
