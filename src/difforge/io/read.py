"""Read images for the image tasks: one picture file, or an .npz batch as `save_npz` writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

MAX_PIXELS = 4096 * 4096  # refuse decompression bombs before decoding them


def read_images(path: str | Path, channels: int) -> torch.Tensor:
    """A PNG/JPEG/... file -> uint8 (1, channels, H, W); an .npz with `images` (N, H, W, C)
    uint8 -> (N, channels, H, W). Grayscale <-> RGB is converted to `channels`; transparent
    pixels go on black. Any problem is a ValueError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no such image file: {path}")
    if path.suffix.lower() == ".npz":
        return _read_npz(path, channels)
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            if img.width * img.height > MAX_PIXELS:
                raise ValueError(f"{path}: {img.width}x{img.height} pixels is too large")
            img.load()
            if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                rgba = img.convert("RGBA")
                img = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
            img = img.convert("L" if channels == 1 else "RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as e:
        raise ValueError(f"{path}: not a readable image ({type(e).__name__})") from None
    arr = np.asarray(img, dtype=np.uint8)
    arr = arr[:, :, None] if arr.ndim == 2 else arr  # (H, W, C)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).unsqueeze(0)  # (1, C, H, W)


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
    """A mask image -> float (N, 1, H, W) of 0/1: white (>= 128) = fill, black = keep.
    A transparent PNG counts its opaque pixels as painted (alpha >= 128)."""
    path = Path(path)
    if path.suffix.lower() != ".npz" and path.is_file():
        from PIL import Image

        try:
            with Image.open(path) as img:
                if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                    alpha = np.asarray(img.convert("RGBA"), dtype=np.uint8)[..., 3]
                    return torch.from_numpy((alpha >= 128).astype(np.float32))[None, None]
        except Exception:  # read_images below names the problem
            pass
    return (read_images(path, 1) >= 128).float()
