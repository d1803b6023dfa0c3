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

from difforge.io.decode import ImageError, WrongSize, read_image, read_mask


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


def decode_image(data: bytes, field: str, channels: int, size: int) -> torch.Tensor:
    """Image file bytes -> uint8 (1, channels, size, size) by the project's one decoder
    (`difforge.io.decode`: its formats, EXIF orientation, transparency over white, 16-bit
    scaling). An image that is not size x size is refused from its header, before its
    pixels are decoded."""
    if not data:
        raise BadInput(f"{field}: empty file; expected an image")
    try:
        arr = read_image(data, channels, max_pixels=size * size, expect=(size, size))
    except WrongSize as e:
        raise BadInput(f"{field} is {e.size[0]}x{e.size[1]}; this model takes {size}x{size} images") from None
    except ImageError as e:
        raise BadInput(f"{field}: {e}") from None
    return torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0)  # (1, C, H, W)


def decode_mask(data: bytes, size: int, field: str = "mask") -> torch.Tensor:
    """A mask image -> float (1, 1, size, size) of 0/1 (`difforge.io.decode.read_mask`:
    bright pixels are 1 = to fill; in a mask with transparent pixels, the opaque ones).
    A mask that is not size x size is refused from its header, before it is decoded."""
    if not data:
        raise BadInput(f"{field}: empty file; expected an image")
    try:
        painted = read_mask(data, max_pixels=size * size, expect=(size, size))
    except WrongSize as e:
        raise BadInput(f"{field} is {e.size[0]}x{e.size[1]} but the image is {size}x{size}; they must match") from None
    except ImageError as e:
        raise BadInput(f"{field}: {e}") from None
    return torch.from_numpy(painted.astype(np.float32))[None, None]


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


def frames_in_a_row(clips: torch.Tensor) -> torch.Tensor:
    """uint8 clips (N, C, T, H, W) -> uint8 images (N, C, H, T * W): each clip's frames side by side."""
    n, c, t, h, w = clips.shape
    return clips.permute(0, 1, 3, 2, 4).reshape(n, c, h, t * w)


def gif_b64(clip: torch.Tensor, fps: int) -> str:
    """uint8 clip (C, T, H, W) -> base64 text of its looping GIF."""
    from difforge.io.video import gif_bytes

    return base64.b64encode(gif_bytes(clip[None], fps=fps)).decode("ascii")
