"""Write images: grids and GIFs as PNG/GIF files, sample sets as .npz."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from difforge.io.space import to_uint8  # noqa: E402,F401 - the one conversion, re-exported


def check_uint8_batch(images, channels: int, size: int, who: str) -> None:
    """A one-line ValueError unless `images` is a uint8 (N, channels, size, size) tensor;
    `who` names what takes them ("this classifier")."""
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.ndim != 4:
        got = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"expected uint8 images (N, C, H, W), got {got}")
    if tuple(images.shape[1:]) != (channels, size, size):
        raise ValueError(f"images are {'x'.join(map(str, images.shape[1:]))}; {who} takes {channels}x{size}x{size}")


def make_grid(images: torch.Tensor, nrow: int, pad: int = 2, pad_value: int = 255) -> np.ndarray:
    """uint8 (N, C, H, W) -> one uint8 (H', W', C) array with `nrow` images per row."""
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(f"expected uint8 images of shape (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
    n, c, h, w = images.shape
    ncol = max(1, min(nrow, n))
    rows = (n + ncol - 1) // ncol
    grid = np.full((rows * (h + pad) + pad, ncol * (w + pad) + pad, c), pad_value, dtype=np.uint8)
    arr = images.permute(0, 2, 3, 1).numpy()  # (N, H, W, C)
    for i in range(n):
        r, k = divmod(i, ncol)
        y, x = pad + r * (h + pad), pad + k * (w + pad)
        grid[y : y + h, x : x + w] = arr[i]
    return grid


def _to_pil(arr: np.ndarray, scale: int = 1):
    from PIL import Image

    img = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    return img


def save_grid(images: torch.Tensor, path: str | Path, nrow: int = 10, scale: int = 1) -> Path:
    """Save uint8 images (N, C, H, W) as one PNG grid; `scale` enlarges pixels (nearest)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _to_pil(make_grid(images, nrow), scale).save(path)
    return path


def save_gif(
    frames: Sequence[torch.Tensor], path: str | Path, nrow: int = 10, scale: int = 2, ms: int = 80, hold_ms: int = 1500
) -> Path:
    """Save a sequence of uint8 image batches as an animated GIF of grids, looping,
    the last frame held for `hold_ms`."""
    if not frames:
        raise ValueError("no frames to write")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pics = [_to_pil(make_grid(f, nrow), scale) for f in frames]
    durations = [ms] * (len(pics) - 1) + [hold_ms]
    pics[0].save(path, save_all=True, append_images=pics[1:], duration=durations, loop=0)
    return path


def save_npz(path: str | Path, images: torch.Tensor, labels: torch.Tensor | None = None) -> Path:
    """Save uint8 images (N, C, H, W) as `images` (N, H, W, C) and, when given, int64 `labels`;
    and the same as `arr_0` (N, H, W, 3), RGB with grayscale repeated, and `arr_1` (the
    labels): the arrays OpenAI's ADM evaluator (guided-diffusion's `evaluations/evaluator.py`)
    reads."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nhwc = images.permute(0, 2, 3, 1).contiguous().numpy().astype(np.uint8)
    arrays = {"images": nhwc, "arr_0": np.repeat(nhwc, 3, axis=-1) if nhwc.shape[-1] == 1 else nhwc}
    if labels is not None:
        arrays["labels"] = arrays["arr_1"] = labels.cpu().numpy().astype(np.int64)
    np.savez_compressed(path, **arrays)
    return path


def save_png_dir(folder: str | Path, images: torch.Tensor) -> Path:
    """Save uint8 images (N, C, H, W) as one PNG each at their own size, 000000.png on: the
    layout folder-based FID tools read, and what the image tasks take as --image."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    arr = images.permute(0, 2, 3, 1).contiguous().numpy()  # (N, H, W, C)
    for i, a in enumerate(arr):
        _to_pil(a).save(folder / f"{i:06d}.png")
    return folder
