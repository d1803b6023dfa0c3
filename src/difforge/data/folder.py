"""A folder of images, decoded safely with Pillow into one uint8 ImageDataset.

Layout: when the folder has sub-folders that contain images, each top-level sub-folder
is a class (names sorted; images found recursively inside it). Otherwise the folder is
flat and unlabelled (labels None, unconditional training). Hidden files and folders
(names starting with ".") are ignored.

Decoding never stops on one bad file: unreadable, truncated, oversized (decompression
bomb) or non-image files are skipped and returned as (path, reason) pairs.

Conversions (documented choices):
- transparency (RGBA, LA, PA, P or L/RGB with a transparent colour) is composited over a
  *white* background (`background=255`), as image viewers show it;
- CMYK, YCbCr, palette and other colour modes convert with Pillow's `convert("RGB")`
  (no ICC colour management); bilevel "1" becomes 0/255 "L";
- 16-bit "I;16*" is scaled by 255/65535; 32-bit "I" and float "F" are kept when in 0..255,
  scaled by 255/65535 when in 0..65535 ("F" in 0..1 by 255), else min-max stretched;
- EXIF orientation is applied;
- colour -> grayscale uses Pillow's ITU-R 601-2 luma; grayscale -> RGB repeats the channel.
With `channels=None` the set is grayscale (1) when every image is: grayscale modes, or
colour images whose three channels are equal; otherwise RGB (3).

Sizing: each image is center-cropped to its largest centred square and resized to
`size` x `size` with Lanczos in one step. The default `size` is the median of the images'
shorter sides, capped at 64 (DEFAULT_MAX_SIZE): never larger than needed for a laptop,
and robust to a few odd thumbnails, which are upscaled.
"""

from __future__ import annotations

import os
import statistics
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps

from difforge.data.dataset import ImageDataset

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
DEFAULT_MAX_SIZE = 64  # the default load size is min(this, median shorter side)
MAX_PIXELS = 64_000_000  # decompression-bomb limit per image (width * height)
_HIGH_BIT_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})

Skipped = list[tuple[str, str]]


def _scan(root: Path) -> tuple[list[tuple[Path, str | None]], Skipped]:
    """Candidate image files with their class folder (None when flat), and ignored files."""
    files: list[tuple[Path, str | None]] = []
    others: Skipped = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel = Path(dirpath).relative_to(root)
        top = rel.parts[0] if rel.parts else None
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = Path(dirpath) / name
            suffix = path.suffix.lower()
            if suffix in IMAGE_EXTENSIONS:
                files.append((path, top))
            else:
                others.append((str(path), f"unsupported file type {suffix or '(none)'!r}"))
    if any(top is not None for _, top in files):  # class sub-folders: loose files are ignored
        others += [(str(p), "not inside a class sub-folder") for p, top in files if top is None]
        files = [(p, top) for p, top in files if top is not None]
    files.sort(key=lambda pt: (pt[1] or "", str(pt[0])))
    return files, others


def _open(path: Path | BinaryIO, max_pixels: int) -> Image.Image:
    """Image.open (a path or a binary file) with the decompression-bomb checks turned
    into errors."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        im = Image.open(path)
    w, h = im.size
    if w * h > max_pixels or w < 1 or h < 1:
        im.close()
        raise ValueError(f"{w}x{h} pixels is outside 1..{max_pixels} (decompression-bomb limit)")
    return im


def _scale_to_l(im: Image.Image) -> Image.Image:
    """High-bit-depth or float grayscale -> 8-bit "L" (Pillow's convert would clip)."""
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


def _to_l_or_rgb(im: Image.Image, background: int) -> Image.Image:
    """Any Pillow mode -> "L" (grayscale modes) or "RGB" (everything else)."""
    mode = im.mode
    if mode in _HIGH_BIT_MODES:  # a 16-bit transparent colour key, if any, is ignored
        return _scale_to_l(im)
    if mode in _ALPHA_MODES or "transparency" in im.info:
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (background, background, background, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    if mode == "L":
        return im
    if mode == "1":
        return im.convert("L")
    return im if mode == "RGB" else im.convert("RGB")


def decode_image(
    src: Path | BinaryIO, *, background: int = 255, max_pixels: int = MAX_PIXELS, draft: int | None = None
) -> tuple[Image.Image, tuple[int, int], str]:
    """One image file -> (pixels as an "L" or "RGB" image, stored (width, height), stored mode).

    Applies every conversion documented above (transparency over `background`, CMYK,
    palette, 16-bit, EXIF orientation). `draft` lets JPEG decode at a reduced scale that
    still covers draft x draft; None decodes at full resolution. Raises on a corrupt,
    truncated, oversized or non-image file.
    """
    with _open(src, max_pixels) as im:
        stored_size, stored_mode = im.size, im.mode
        if draft is not None:
            im.draft(None, (draft, draft))
        im = ImageOps.exif_transpose(im)  # loads the pixels
        im = _to_l_or_rgb(im, background)
    return im, stored_size, stored_mode


def fit_square(im: Image.Image, size: int, channels: int | None) -> np.ndarray:
    """An "L"/"RGB" image -> uint8 (size, size) or (size, size, 3): convert to `channels`
    (None keeps the mode), center-crop the largest centred square, Lanczos-resize."""
    if channels == 1 and im.mode != "L":
        im = im.convert("L")
    elif channels == 3 and im.mode != "RGB":
        im = im.convert("RGB")
    w, h = im.size
    if (w, h) != (size, size):
        s = min(w, h)
        box = ((w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2)  # centred square
        im = im.resize((size, size), Image.Resampling.LANCZOS, box=box, reducing_gap=3.0)
    return np.asarray(im, dtype=np.uint8).copy()


def _decode(path: Path, size: int, channels: int | None, background: int, max_pixels: int) -> np.ndarray:
    """One file -> uint8 (size, size) for grayscale or (size, size, 3) for RGB."""
    im, _, _ = decode_image(path, background=background, max_pixels=max_pixels, draft=size)
    return fit_square(im, size, channels)


def _is_gray(a: np.ndarray) -> bool:
    return a.ndim == 2 or bool((a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all())


def _error(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}".splitlines()[0]


def load_image_folder(
    root: str | Path,
    *,
    channels: int | None = None,
    size: int | None = None,
    background: int = 255,
    max_pixels: int = MAX_PIXELS,
) -> tuple[ImageDataset, Skipped]:
    """Load every image under `root` into memory as uint8 (N, C, size, size).

    channels: 1 (grayscale) or 3 (RGB); None: 1 when every image is grayscale, else 3.
    size: square side; None: min(DEFAULT_MAX_SIZE, median of the images' shorter sides).
    background: gray level (0..255) that transparent pixels are composited over.
    Returns (dataset, skipped) where skipped lists (path, reason) for every file not used.
    """
    root = Path(root)
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be 1, 3 or None, got {channels!r}")
    if size is not None and size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} not found")
    files, skipped = _scan(root)
    if not files:
        raise ValueError(
            f"no images found in {root} (extensions {', '.join(sorted(IMAGE_EXTENSIONS))})"
        )

    if size is None:  # headers only: cheap
        sides, readable = [], []
        for path, cls in files:
            try:
                with _open(path, max_pixels) as im:
                    sides.append(min(im.size))
                readable.append((path, cls))
            except MemoryError:
                raise
            except Exception as e:  # never stop on one bad file
                skipped.append((str(path), _error(e)))
        files = readable
        size = min(DEFAULT_MAX_SIZE, statistics.median_low(sides)) if sides else 1

    arrays: list[np.ndarray] = []
    classes: list[str | None] = []
    for path, cls in files:
        try:
            arrays.append(_decode(path, size, channels, background, max_pixels))
            classes.append(cls)
        except MemoryError:
            raise
        except Exception as e:
            skipped.append((str(path), _error(e)))
    if not arrays:
        first = f"; first: {skipped[0][0]}: {skipped[0][1]}" if skipped else ""
        raise ValueError(f"no readable images in {root} ({len(skipped)} files skipped{first})")

    if channels is None:
        channels = 1 if all(_is_gray(a) for a in arrays) else 3
    if channels == 1:
        stacked = np.stack([a if a.ndim == 2 else a[..., 0] for a in arrays])[:, None]  # (N,1,H,W)
    else:
        rgb = [np.repeat(a[..., None], 3, axis=2) if a.ndim == 2 else a for a in arrays]
        stacked = np.stack(rgb).transpose(0, 3, 1, 2)  # (N, H, W, 3) -> (N, 3, H, W)

    labels = class_names = None
    if classes[0] is not None:
        class_names = sorted(set(classes))  # classes whose images all failed are dropped
        index = {c: i for i, c in enumerate(class_names)}
        labels = torch.tensor([index[c] for c in classes], dtype=torch.int64)
    dataset = ImageDataset(
        images=torch.from_numpy(np.ascontiguousarray(stacked)),
        labels=labels,
        class_names=class_names,
        name=root.resolve().name or str(root),
    )
    return dataset, skipped
