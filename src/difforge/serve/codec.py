"""Request and response pixels: base64 text <-> PNG bytes <-> uint8 tensors (N, C, H, W).

Every decoding problem becomes a `BadInput` with one line naming it (bad base64, not an
image, wrong size, ...); the routes answer those with 422.
"""

from __future__ import annotations

import base64
import binascii
import io

import numpy as np
import torch

MAX_PIXELS = 4096 * 4096  # refuse decompression bombs before decoding them


class BadInput(ValueError):
    """A request value that cannot be used; its message is shown to the client."""


def b64decode(text: str, field: str) -> bytes:
    """Strict base64 (a `data:...;base64,` prefix is allowed) -> bytes."""
    if not isinstance(text, str) or not text.strip():
        raise BadInput(f"{field}: empty; expected a base64-encoded PNG")
    payload = text.split(",", 1)[1] if text.startswith("data:") and "," in text else text
    try:
        return base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError):
        raise BadInput(f"{field}: not valid base64") from None


def decode_image(data: bytes, field: str, channels: int, size: int | None = None) -> torch.Tensor:
    """Image file bytes (PNG, JPEG, ... anything Pillow reads) -> uint8 (1, channels, H, W).

    With `size`, an image that is not size x size is refused from its header, before its
    pixels are decoded."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise BadInput(f"{field}: empty file; expected an image")
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > MAX_PIXELS:
                raise BadInput(f"{field}: {img.width}x{img.height} is too large")
            if size is not None and img.size != (size, size):
                raise BadInput(f"{field} is {img.width}x{img.height}; this model takes {size}x{size} images")
            img.load()
            if img.mode in ("RGBA", "LA", "P", "PA"):
                img = img.convert("RGBA")
                background = Image.new("RGBA", img.size, (0, 0, 0, 255))
                img = Image.alpha_composite(background, img)
            img = img.convert("L" if channels == 1 else "RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        if isinstance(e, BadInput):
            raise
        raise BadInput(f"{field}: not a readable image ({type(e).__name__})") from None
    arr = np.asarray(img, dtype=np.uint8)
    arr = arr[:, :, None] if arr.ndim == 2 else arr  # (H, W, C)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).unsqueeze(0)  # (1, C, H, W)


def decode_mask(data: bytes, field: str = "mask") -> torch.Tensor:
    """A mask image -> float (1, 1, H, W) of 0/1: bright pixels (>= 128) are 1 = to fill.

    A transparent PNG counts its opaque pixels as painted (alpha >= 128), as a brush on a
    transparent layer leaves them.
    """
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as probe:
            has_alpha = probe.mode in ("RGBA", "LA", "PA") or (probe.mode == "P" and "transparency" in probe.info)
            has_alpha = has_alpha and probe.width * probe.height <= MAX_PIXELS
    except Exception:  # noqa: BLE001 - decode_image below gives the message
        has_alpha = False
    if has_alpha:
        try:
            with Image.open(io.BytesIO(data)) as img:
                alpha = np.asarray(img.convert("RGBA"), dtype=np.uint8)[..., 3]
        except (OSError, SyntaxError, ValueError):
            raise BadInput(f"{field}: not a readable image") from None
        return torch.from_numpy((alpha >= 128).astype(np.float32))[None, None]
    gray = decode_image(data, field, channels=1)
    return (gray >= 128).float()


def encode_png(image: torch.Tensor, scale: int = 1) -> bytes:
    """uint8 (C, H, W) -> PNG bytes, pixels enlarged `scale` times (nearest)."""
    return grid_png(image[None], nrow=1, scale=scale, pad=0)


def grid_png(images: torch.Tensor, nrow: int, scale: int = 1, pad: int = 2) -> bytes:
    """uint8 (N, C, H, W) -> one PNG grid, `nrow` images per row."""
    from PIL import Image

    from difforge.io import make_grid

    arr = make_grid(images, nrow, pad=pad)
    img = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def png_b64(image: torch.Tensor) -> str:
    """uint8 (C, H, W) -> base64 text of its PNG."""
    return base64.b64encode(encode_png(image)).decode("ascii")
