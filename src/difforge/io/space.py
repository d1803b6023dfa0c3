"""Pixels <-> model space: the one conversion between uint8 images at the data's native
size and float images in [-1, 1] at the model's input size.

    model  = pad_or_resize(k / 127.5 - 1)        k in 0..255, padding -1 (black)
    pixels = round((clamp(crop_or_resize(x), -1, 1) + 1) * 127.5)

Clips (N, C, T, H, W) convert frame by frame, exactly as images do.

A smaller image is padded symmetrically (the extra pixel of an odd difference going
right / bottom: 28 -> 32 is 2 px on each side), a larger square one resized (bilinear,
antialiased); the way back crops the padding or resizes back, so a round trip of uint8
images through a padded model size is exact.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def from_uint8(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float32 in [-1, 1] (k / 127.5 - 1)."""
    return images.float() / 127.5 - 1


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Float images in [-1, 1] -> uint8 on the CPU (values outside are clamped)."""
    return ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()


def to_model_size(x: torch.Tensor, size: int, fill: float = -1.0) -> torch.Tensor:
    """Float images (N, C, h, w) -> (N, C, size, size): padded with `fill` when smaller,
    resized (bilinear, antialiased) when larger and square."""
    h, w = x.shape[-2:]
    if h <= size and w <= size:
        top, left = (size - h) // 2, (size - w) // 2
        pad = (left, size - w - left, top, size - h - top)
        return F.pad(x, pad, value=fill) if any(pad) else x
    if h != w:
        raise ValueError(f"cannot resize non-square images {h}x{w} to {size}")
    flat = x.reshape(-1, *x.shape[-3:]) if x.ndim > 4 else x  # clips: frames as images
    out = F.interpolate(flat, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out.reshape(*x.shape[:-2], size, size)


def to_native_size(x: torch.Tensor, native: int) -> torch.Tensor:
    """Model-size float images -> (N, C, native, native): the padding cropped away, or
    resized back (bilinear) from a smaller model size. Not clamped."""
    h, w = x.shape[-2:]
    if h >= native and w >= native:
        top, left = (h - native) // 2, (w - native) // 2
        return x[..., top : top + native, left : left + native]
    flat = x.reshape(-1, *x.shape[-3:]) if x.ndim > 4 else x  # clips: frames as images
    out = F.interpolate(flat, size=(native, native), mode="bilinear", align_corners=False)
    return out.reshape(*x.shape[:-2], native, native)


def to_model_input(batch: torch.Tensor, image_size: int, *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 (N, C, h, w) -> float (N, C, S, S) in [-1, 1], S = image_size (training's input);
    clips (N, C, T, h, w) -> (N, C, T, S, S)."""
    if batch.dtype != torch.uint8 or batch.ndim not in (4, 5):
        raise ValueError(f"expected a uint8 batch (N, C, H, W) or (N, C, T, H, W), got {batch.dtype} "
                         f"{tuple(batch.shape)}")
    return to_model_size(from_uint8(batch), image_size).to(dtype)  # float32 maths, cast once at the end


def from_model_output(x: torch.Tensor, native_size: int) -> torch.Tensor:
    """Model-space float (N, C, S, S) -> uint8 (N, C, native_size, native_size) (clips:
    (N, C, T, S, S) -> (N, C, T, native, native)); the inverse of `to_model_input`."""
    if x.ndim not in (4, 5):
        raise ValueError(f"expected a batch (N, C, H, W) or (N, C, T, H, W), got shape {tuple(x.shape)}")
    return to_uint8(to_native_size(x.float(), native_size))
