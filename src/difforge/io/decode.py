"""The one image decoder of difforge: training folders, `prepare`, the task commands and
the HTTP API all read user images through it, so they agree on every pixel.

Policy (one for all):
- formats: only `FORMATS` (PNG, JPEG, BMP, GIF, WebP, TIFF) are given to Pillow
  (`Image.open(..., formats=FORMATS)`); any other file (EPS, PSD, ICO, ...) is refused
  with one line naming its format, before any decoder of that format runs (EPS would
  start Ghostscript);
- size: width x height is read from the header and checked against a pixel limit
  (`MAX_PIXELS` unless a caller passes a smaller one) and, when asked, an exact size,
  before any pixel is decoded;
- EXIF orientation is applied;
- transparency (RGBA, LA, PA, or a palette / L / RGB with a transparent colour) is
  composited over a white background (`background=255`), as image viewers show it;
- 16-bit "I;16*" is scaled by 255/65535; 32-bit "I" and float "F" are kept when in 0..255,
  scaled by 255/65535 when in 0..65535 ("F" in 0..1 by 255), else min-max stretched;
- CMYK, YCbCr, palette and other colour modes convert with Pillow's `convert("RGB")`;
  bilevel "1" becomes 0/255 "L"; colour -> grayscale uses Pillow's ITU-R 601-2 luma.
Depends only on Pillow and numpy.
"""

from __future__ import annotations

import io
import re
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np

FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF")  # the image files difforge reads
FORMAT_NAMES = "PNG, JPEG, BMP, GIF, WebP or TIFF"
MAX_PIXELS = 64_000_000  # decompression-bomb limit per image (width * height)
_HIGH_BIT_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})

Source = str | Path | bytes | BinaryIO


class ImageError(ValueError):
    """A file that is not decoded: another format, too large, the wrong size, unreadable.
    Its message is one line."""


class WrongSize(ImageError):
    """The header's size is not the one asked for; `size` is the stored (width, height)."""

    def __init__(self, size: tuple[int, int], expected: tuple[int, int]):
        super().__init__(f"{size[0]}x{size[1]} pixels; expected {expected[0]}x{expected[1]}")
        self.size, self.expected = size, expected


def _reason(e: BaseException, src: Source | None = None) -> str:
    """An exception as one short line: its type and the first line of its message (for
    bytes, without the repr of the in-memory file Pillow names)."""
    text = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
    if isinstance(src, (bytes, bytearray, memoryview)):
        text = re.sub(r" ?<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "", text)
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _file(src: Source):
    return io.BytesIO(src) if isinstance(src, (bytes, bytearray, memoryview)) else src


def _other_format(src: Source) -> str | None:
    """The Pillow format a refused file is, from its first bytes (each plugin's magic-number
    test only: nothing is parsed), or None."""
    from PIL import Image

    try:
        if isinstance(src, (str, Path)):
            with open(src, "rb") as f:
                prefix = f.read(16)
        elif isinstance(src, (bytes, bytearray, memoryview)):
            prefix = bytes(src[:16])
        else:
            pos = src.tell()
            prefix = src.read(16)
            src.seek(pos)
    except OSError:
        return None
    Image.init()
    for fmt, (_, accept) in Image.OPEN.items():
        if fmt in FORMATS or accept is None:
            continue
        if fmt in ("ICO", "CUR") and int.from_bytes(prefix[4:6], "little") == 0:
            continue  # no icons inside: their 4-byte magic number is also the start of a TGA header
        try:
            if accept(prefix):
                return fmt
        except Exception:  # noqa: BLE001 - a test that cannot judge these bytes
            continue
    return None


def open_image(src: Source, *, max_pixels: int = MAX_PIXELS, expect: tuple[int, int] | None = None):
    """Image.open restricted to `FORMATS`, with its size checked from the header: more than
    `max_pixels`, or other than `expect` (width, height) when given, raises ImageError
    before any pixel is decoded. The caller closes the image."""
    from PIL import Image, UnidentifiedImageError

    try:
        if max_pixels > Image.MAX_IMAGE_PIXELS:  # Pillow's own limit would only warn: make it refuse
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                im = Image.open(_file(src), formats=FORMATS)
        else:
            im = Image.open(_file(src), formats=FORMATS)
    except UnidentifiedImageError as e:
        other = _other_format(src)
        if other is not None:
            raise ImageError(f"{other} files are not accepted; send {FORMAT_NAMES}") from None
        raise ImageError(f"not a readable image ({_reason(e, src)}); send {FORMAT_NAMES}") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"too large ({str(e).splitlines()[0]})") from None
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - a malformed header can raise almost anything
        raise ImageError(f"not a readable image ({_reason(e, src)})") from None
    w, h = im.size
    if expect is not None and (w, h) != tuple(expect):
        im.close()
        raise WrongSize((w, h), tuple(expect))
    if w * h > max_pixels or w < 1 or h < 1:
        im.close()
        raise ImageError(f"{w}x{h} pixels is outside 1..{max_pixels} (decompression-bomb limit)")
    return im


def _scale_to_l(im):
    """High-bit-depth or float grayscale -> 8-bit "L" (Pillow's convert would clip)."""
    from PIL import Image

    a = np.nan_to_num(np.asarray(im).astype(np.float64))
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if im.mode.startswith("I;16"):
        a = a * 255 / 65535
    elif im.mode == "F" and lo >= 0 and hi <= 1:
        a = a * 255
    elif lo >= 0 and hi <= 255:
        pass
    elif lo >= 0 and hi <= 65535:
        a = a * 255 / 65535
    else:
        a = (a - lo) * (255 / (hi - lo)) if hi > lo else np.zeros_like(a)
    return Image.fromarray(np.clip(np.floor(a + 0.5), 0, 255).astype(np.uint8), mode="L")


def _has_alpha(im) -> bool:
    return im.mode in _ALPHA_MODES or "transparency" in im.info


def _to_l_or_rgb(im, background: int):
    """Any Pillow mode -> "L" (grayscale modes) or "RGB" (everything else)."""
    from PIL import Image

    mode = im.mode
    if mode in _HIGH_BIT_MODES:  # a 16-bit transparent colour key, if any, is ignored
        return _scale_to_l(im)
    if _has_alpha(im):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (background, background, background, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    if mode == "L":
        return im
    if mode == "1":
        return im.convert("L")
    return im if mode == "RGB" else im.convert("RGB")


def _load(im, what: str):
    """EXIF orientation applied (this decodes the pixels); decoding errors as ImageError."""
    from PIL import ImageOps

    try:
        return ImageOps.exif_transpose(im)
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - a malformed file can raise almost anything while decoding
        raise ImageError(f"{what} ({_reason(e)})") from None


def decode_image(src: Source, *, background: int = 255, max_pixels: int = MAX_PIXELS, draft: int | None = None,
                 expect: tuple[int, int] | None = None):
    """One image file (a path, bytes or a binary file) -> (pixels as an "L" or "RGB" Pillow
    image, stored (width, height), stored mode), by the policy above. `draft` lets JPEG
    decode at a reduced scale that still covers draft x draft. Raises ImageError."""
    with open_image(src, max_pixels=max_pixels, expect=expect) as im:
        stored_size, stored_mode = im.size, im.mode
        if draft is not None:
            im.draft(None, (draft, draft))
        im = _to_l_or_rgb(_load(im, "not a readable image"), background)
    return im, stored_size, stored_mode


def to_array(im, channels: int) -> np.ndarray:
    """An "L"/"RGB" image -> uint8 (H, W, channels), converting grayscale <-> RGB."""
    im = im.convert("L" if channels == 1 else "RGB") if im.mode != ("L" if channels == 1 else "RGB") else im
    arr = np.asarray(im, dtype=np.uint8)
    return (arr[:, :, None] if arr.ndim == 2 else arr).copy()


def pil_to_array(im, channels: int | None = None) -> np.ndarray:
    """A PIL image of any mode (already in memory) -> uint8 (H, W, C) by the policy above
    (transparency over white, 16-bit scaling); C = `channels`, else 1 for grayscale modes
    and 3 for the others."""
    im = _to_l_or_rgb(im, 255)
    return to_array(im, channels or (1 if im.mode == "L" else 3))


def read_image(src: Source, channels: int, *, max_pixels: int = MAX_PIXELS,
               expect: tuple[int, int] | None = None) -> np.ndarray:
    """One image file -> uint8 (H, W, channels) by the policy above."""
    im, _, _ = decode_image(src, max_pixels=max_pixels, expect=expect)
    return to_array(im, channels)


def read_mask(src: Source, *, max_pixels: int = MAX_PIXELS, expect: tuple[int, int] | None = None) -> np.ndarray:
    """A mask file -> bool (H, W), True = to fill. A mask with transparent pixels counts its
    opaque pixels (alpha >= 128) as painted, as a brush on a transparent layer leaves them;
    any other mask (a fully opaque RGBA one too) counts its bright pixels (>= 128)."""
    with open_image(src, max_pixels=max_pixels, expect=expect) as im:
        im = _load(im, "not a readable image")
        if _has_alpha(im) and im.mode not in _HIGH_BIT_MODES:
            alpha = np.asarray(im.convert("RGBA"), dtype=np.uint8)[..., 3]
            if alpha.min() < 255:
                return alpha >= 128
        gray = _to_l_or_rgb(im, 255).convert("L")
    return np.asarray(gray, dtype=np.uint8) >= 128
