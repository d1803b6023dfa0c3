"""Inpainting masks: (N, 1, H, W) float, 1 = fill (unknown), 0 = keep.

Presets by name (`make_mask`), and masks from images (`mask_from_array`: white = fill).
"""

from __future__ import annotations

import math

import torch

PRESETS = ("center", "left", "right", "top", "bottom", "strokes", "lines")


def make_mask(name: str, size: int, n: int = 1, *, seed: int = 0) -> torch.Tensor:
    """A preset mask (N, 1, size, size), 1 = fill.

    - center: the central box, half the side (a quarter of the area);
    - left / right / top / bottom: that half of the image;
    - strokes: random thick strokes, mask i drawn from seed + i (about a third of the area);
    - lines: every other row (the odd rows), the "missing scanlines" case.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown mask {name!r}; expected one of {sorted(PRESETS)} or a PNG file")
    if size < 2:
        raise ValueError(f"mask size must be >= 2, got {size}")
    m = torch.zeros(n, 1, size, size)
    h = size // 2
    if name == "center":
        lo = (size - h) // 2
        m[..., lo : lo + h, lo : lo + h] = 1
    elif name == "left":
        m[..., :, :h] = 1
    elif name == "right":
        m[..., :, h:] = 1
    elif name == "top":
        m[..., :h, :] = 1
    elif name == "bottom":
        m[..., h:, :] = 1
    elif name == "lines":
        m[..., 1::2, :] = 1
    else:
        for i in range(n):
            m[i, 0] = random_strokes(size, torch.Generator().manual_seed(seed + i))
    return m


def random_strokes(size: int, g: torch.Generator, coverage: float = 0.3) -> torch.Tensor:
    """(size, size) of thick random polylines until `coverage` of the pixels are masked,
    in the spirit of the free-form masks of Yu et al. (2019, "Free-form image inpainting
    with gated convolution")."""
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    m = torch.zeros(size, size)
    width = max(1.0, size / 14)
    for _ in range(50):
        if m.mean() >= coverage:
            break
        p = torch.rand(2, generator=g) * size
        for _ in range(int(torch.randint(2, 5, (1,), generator=g))):
            angle = float(torch.rand(1, generator=g)) * 2 * math.pi
            length = (0.2 + 0.4 * float(torch.rand(1, generator=g))) * size
            q = (p + length * torch.tensor([math.sin(angle), math.cos(angle)])).clamp(0, size - 1)
            # distance of every pixel to the segment p-q
            d = q - p
            t = (((yy - p[0]) * d[0] + (xx - p[1]) * d[1]) / d.dot(d).clamp(min=1e-6)).clamp(0, 1)
            dist = ((yy - p[0] - t * d[0]) ** 2 + (xx - p[1] - t * d[1]) ** 2).sqrt()
            m[dist <= width] = 1
            p = q
    return m


def mask_from_array(arr: torch.Tensor, size: int | None = None) -> torch.Tensor:
    """uint8 (N, C, H, W) mask images -> float (N, 1, H, W): white (> 127 in the mean over
    channels) = fill. A mask of the wrong size is an error, not silently resized."""
    if arr.ndim != 4:
        raise ValueError(f"mask must be (N, C, H, W), got shape {tuple(arr.shape)}")
    if size is not None and tuple(arr.shape[-2:]) != (size, size):
        raise ValueError(f"mask is {arr.shape[-2]}x{arr.shape[-1]}; the image is {size}x{size}")
    return (arr.float().mean(dim=1, keepdim=True) > 127.5).float()


def check_mask(mask: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """A float (N, 1, H, W) mask in {0, 1} matching `image` (N, C, H, W); a single mask
    is broadcast over the batch."""
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"mask must be a tensor, got {type(mask).__name__}")
    if mask.ndim == 2:
        mask = mask[None, None]
    elif mask.ndim == 3:
        mask = mask[:, None] if mask.shape[0] == image.shape[0] and mask.shape[0] != 1 else mask[None]
    if mask.ndim != 4 or mask.shape[1] != 1:
        raise ValueError(f"mask must be (N, 1, H, W), got shape {tuple(mask.shape)}")
    if mask.shape[-2:] != image.shape[-2:]:
        raise ValueError(f"mask is {mask.shape[-2]}x{mask.shape[-1]}; "
                         f"the image is {image.shape[-2]}x{image.shape[-1]}")
    if mask.shape[0] not in (1, image.shape[0]):
        raise ValueError(f"got {mask.shape[0]} masks for {image.shape[0]} images")
    mask = mask.float()
    if not ((mask == 0) | (mask == 1)).all():
        raise ValueError("mask values must be 0 (keep) or 1 (fill)")
    return mask.expand(image.shape[0], 1, *image.shape[-2:]).contiguous()
