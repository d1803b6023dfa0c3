"""Read images for the image tasks: one picture file, or an .npz batch as `save_npz` writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from difforge.io.decode import ImageError, read_image
from difforge.io.decode import read_mask as decode_mask


def read_images(path: str | Path, channels: int) -> torch.Tensor:
    """A PNG/JPEG/... file -> uint8 (1, channels, H, W); an .npz with `images` (N, H, W, C)
    uint8 -> (N, channels, H, W). Picture files are decoded by `difforge.io.decode` (its
    formats, pixel limit, EXIF orientation, transparency over white, 16-bit scaling), as
    training reads them; grayscale <-> RGB is converted to `channels`. Any problem is a
    ValueError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no such image file: {path}")
    if path.suffix.lower() == ".npz":
        return _read_npz(path, channels)
    try:
        arr = read_image(path, channels)  # (H, W, C)
    except ImageError as e:
        raise ValueError(f"{path}: {e}") from None
    return torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0)  # (1, C, H, W)


def _read_npz(path: Path, channels: int) -> torch.Tensor:
    try:
        with np.load(path, allow_pickle=False) as f:
            if "images" not in f:
                raise ValueError(f"{path}: no 'images' array (expected N, H, W, C uint8)")
            arr = f["images"]
    except (OSError, EOFError, ValueError) as e:
        if str(e).startswith(str(path)):
            raise
        raise ValueError(f"{path}: not a readable .npz ({type(e).__name__})") from None
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] not in (1, 3) or len(arr) == 0:
        raise ValueError(f"{path}: 'images' must be uint8 (N, H, W, C) with C in 1 or 3, got {arr.dtype} {arr.shape}")
    x = torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()  # (N, C, H, W)
    if x.shape[1] == channels:
        return x
    if channels == 3:
        return x.repeat(1, 3, 1, 1)
    w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)  # ITU-R 601 luma, as Pillow's "L"
    return (x.float() * w).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)


def read_mask(path: str | Path) -> torch.Tensor:
    """A mask -> float (N, 1, H, W) of 0/1: white (>= 128) = fill, black = keep. A picture
    with transparent pixels counts its opaque ones as painted (alpha >= 128); see
    `difforge.io.decode.read_mask`. An .npz mask is thresholded at 128."""
    path = Path(path)
    if path.suffix.lower() == ".npz" or not path.is_file():
        return (read_images(path, 1) >= 128).float()
    try:
        painted = decode_mask(path)
    except ImageError as e:
        raise ValueError(f"{path}: {e}") from None
    return torch.from_numpy(painted.astype(np.float32))[None, None]
