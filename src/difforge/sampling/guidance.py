"""Wrappers around a denoiser: classifier-free guidance (with guidance rescale), static
clipping and dynamic thresholding of x0."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from difforge.diffusion.process import float64_device


def _per_sample_std(v: torch.Tensor) -> torch.Tensor:
    return v.std(dim=tuple(range(1, v.ndim)), keepdim=True)  # (B, 1, ..., 1)


def rescale_guidance(x: torch.Tensor, guided: torch.Tensor, d_cond: torch.Tensor, phi: float) -> torch.Tensor:
    """Guidance rescale (Lin et al. 2024, "Common diffusion noise schedules and sample
    steps are flawed", Section 3.4) of a guided x0 estimate, applied to eps.

    With eps = (x - D) / sigma at the same x and sigma for every branch:
    eps_rescaled = eps_cfg * std(eps_cond) / std(eps_cfg) (std per sample, over all other
    dims, unbiased), eps_final = phi * eps_rescaled + (1 - phi) * eps_cfg, and
    D_final = x - sigma * eps_final. This is diffusers' `rescale_noise_cfg`. The 1/sigma
    cancels in the ratio, so it is computed on x - D and works at any sigma.
    """
    e_cfg, e_cond = x - guided, x - d_cond  # sigma * eps
    std_cfg = _per_sample_std(e_cfg)
    ratio = torch.where(std_cfg > 0, _per_sample_std(e_cond) / std_cfg.clamp_min(torch.finfo(std_cfg.dtype).tiny), 1.0)
    factor = phi * ratio + (1 - phi)
    return x - e_cfg * factor


def cat_cond(a: Any, b: Any) -> Any:
    """Two conditioning batches as one, the rows of `a` first: label tensors by `torch.cat`,
    a structured cond (`difforge.models.text.TextCond`, anything with a static `cat` over a
    list of batches) by its own `cat`, which pads what it needs to (a TextCond: the token
    length)."""
    if isinstance(a, torch.Tensor):
        return torch.cat([a, b.to(a.device)])
    return type(a).cat([a, b])


def broadcast_cond(c: Any, n: int) -> Any:
    """A conditioning batch of `n` rows from one of n rows or of 1 row (repeated); works
    for tensors and for structured conds that index by an integer tensor."""
    if len(c) == n:
        return c
    if len(c) == 1:
        return c[torch.zeros(n, dtype=torch.long)]
    raise ValueError(f"a null / negative condition of {len(c)} rows for a batch of {n}: give {n} rows or 1")


class CFGDenoiser(nn.Module):
    """Classifier-free guidance (Ho & Salimans 2022) as a denoiser.

    D = D(x, sigma, null) + scale * (D(x, sigma, cond) - D(x, sigma, null)), both halves
    in one batched forward pass (`cat_cond`). scale = 1 is the plain conditional model, 0
    the unconditional one. `rescale` = phi in [0, 1] applies guidance rescale
    (`rescale_guidance`, on eps); Lin et al. suggest phi = 0.7. 0 (default) is plain CFG.

    `interval` = (lo, hi) applies guidance only at noise levels lo <= sigma <= hi and runs
    the conditional model alone (one pass, half the cost) elsewhere (Kynkaanniemi et al.
    2024, "Applying guidance in a limited interval improves sample and distribution
    quality"): guidance at high noise levels pulls samples towards a few modes, at low
    levels it only sharpens. None (default), or (0, inf), guides at every level.

    The unconditional branch is either `null_label`, the learned null class of a
    class-conditional model, or `null`, an explicit null condition of the batch's rows or
    of 1 row (broadcast): for text (`difforge.models.text.TextCond`) the empty prompt, or a
    negative prompt, which guidance then steers away from (Stable Diffusion's "negative
    prompt" replaces the unconditional branch). `cond=None` samples unconditionally (the
    null).
    """

    def __init__(self, denoiser: nn.Module, scale: float, null_label: int | None = None, rescale: float = 0.0, *,
                 null: Any = None, interval: tuple[float, float] | None = None):
        super().__init__()
        if not 0.0 <= rescale <= 1.0:
            raise ValueError(f"guidance rescale must be in [0, 1], got {rescale}")
        if interval is not None:
            lo, hi = (float(v) for v in interval)
            if not 0.0 <= lo <= hi:
                raise ValueError(f"a guidance interval needs 0 <= lo <= hi (noise levels), got {lo}, {hi}")
            interval = None if lo == 0.0 and hi == math.inf else (lo, hi)
        self.interval = interval
        if (null_label is None) == (null is None):
            raise ValueError("classifier-free guidance needs exactly one of null_label (class labels) and null "
                             "(an explicit null condition, e.g. the empty prompt)")
        self.inner = denoiser
        self.scale = float(scale)
        self.null_label = None if null_label is None else int(null_label)
        self.null = null
        self.rescale = float(rescale)

    def forward(self, x: torch.Tensor, sigma, cond: Any = None) -> torch.Tensor:
        b = x.shape[0]
        if self.null is not None:
            null = broadcast_cond(self.null.to(x.device), b)
            if cond is None:
                return self.inner(x, sigma, null)
        else:
            if cond is None:
                cond = torch.full((b,), self.null_label, dtype=torch.long, device=x.device)
            null = torch.full_like(cond, self.null_label)
        if self.scale == 1.0:
            return self.inner(x, sigma, cond)
        sigma = torch.as_tensor(sigma, dtype=torch.float64, device=float64_device(x.device))
        inside = None
        if self.interval is not None:
            inside = (sigma >= self.interval[0]) & (sigma <= self.interval[1])
            if not bool(inside.any()):
                return self.inner(x, sigma, cond)
            inside = None if bool(inside.all()) else inside.expand(b)  # per-sample levels, some outside
        sigma2 = sigma.expand(b).repeat(2) if sigma.ndim == 0 else sigma.repeat(2)
        both = self.inner(torch.cat([x, x]), sigma2, cat_cond(cond, null))
        d_cond, d_null = both.chunk(2)
        guided = d_null + self.scale * (d_cond - d_null)
        if self.rescale > 0:
            guided = rescale_guidance(x, guided, d_cond, self.rescale)
        if inside is not None:
            guided = torch.where(inside.to(x.device).view((b,) + (1,) * (x.ndim - 1)), guided, d_cond)
        return guided


class ClampDenoiser(nn.Module):
    """Static clipping of the x0 estimate to the data range [lo, hi]."""

    def __init__(self, denoiser: nn.Module, lo: float = -1.0, hi: float = 1.0):
        super().__init__()
        self.inner, self.lo, self.hi = denoiser, lo, hi

    def forward(self, x: torch.Tensor, sigma, cond: torch.Tensor | None = None) -> torch.Tensor:
        return self.inner(x, sigma, cond).clamp(self.lo, self.hi)


def dynamic_threshold(x0: torch.Tensor, p: float = 0.995, max_value: float | None = None) -> torch.Tensor:
    """Imagen's dynamic thresholding (Saharia et al. 2022, Section 2.3) of x0 in [-1, 1] data.

    Per sample: s = the p-quantile of |x0| (linear interpolation, as torch.quantile),
    s = max(s, 1) (and min(s, max_value) when given, as diffusers' sample_max_value);
    x0 = clamp(x0, -s, s) / s. With s = 1 this is static clipping to [-1, 1].
    """
    if not 0.0 < p <= 1.0:
        raise ValueError(f"dynamic-threshold percentile must be in (0, 1], got {p}")
    b = x0.shape[0]
    flat = x0.reshape(b, -1).abs().to(torch.float32 if x0.dtype in (torch.float16, torch.bfloat16) else x0.dtype)
    srt = flat.sort(dim=1).values  # (B, N); torch.quantile refuses inputs over 2^24 values
    pos = p * (srt.shape[1] - 1)
    lo = int(pos)
    hi = min(lo + 1, srt.shape[1] - 1)
    s = srt[:, lo] + (pos - lo) * (srt[:, hi] - srt[:, lo])  # (B,)
    s = s.clamp(min=1.0, max=max_value).to(x0.dtype).view((b,) + (1,) * (x0.ndim - 1))
    return torch.maximum(torch.minimum(x0, s), -s) / s


class DynamicThresholdDenoiser(nn.Module):
    """Dynamic thresholding of the x0 estimate (`dynamic_threshold`); use instead of
    ClampDenoiser with strong guidance, where static clipping saturates."""

    def __init__(self, denoiser: nn.Module, p: float = 0.995, max_value: float | None = None):
        super().__init__()
        if not 0.0 < p <= 1.0:
            raise ValueError(f"dynamic-threshold percentile must be in (0, 1], got {p}")
        self.inner, self.p, self.max_value = denoiser, float(p), max_value

    def forward(self, x: torch.Tensor, sigma, cond: torch.Tensor | None = None) -> torch.Tensor:
        return dynamic_threshold(self.inner(x, sigma, cond), self.p, self.max_value)


class KeepGivenDenoiser(nn.Module):
    """Observed frames put back exactly: D(x, sigma, cond) with the frames a video model's
    cond observes (`cond.keep_given`, `difforge.models.frames.FrameCond`) in place of the
    estimate there. A sampler that ends on D's estimate then returns the given frames as
    they were given; the other frames are denoised knowing them."""

    def __init__(self, denoiser: nn.Module):
        super().__init__()
        self.inner = denoiser

    def forward(self, x: torch.Tensor, sigma, cond: Any = None) -> torch.Tensor:
        out = self.inner(x, sigma, cond)
        return out if cond is None else cond.keep_given(out)
