"""A folder of images, decoded safely with Pillow into one uint8 ImageDataset.

Layout: when the folder has sub-folders that contain images, each top-level sub-folder
is a class (names sorted; images found recursively inside it). Otherwise the folder is
flat and unlabelled (labels None, unconditional training). Hidden files and folders
(names starting with ".") are ignored.

Decoding never stops on one bad file: unreadable, truncated, oversized (decompression
bomb), non-image files and images in formats difforge does not read are skipped and
returned as (path, reason) pairs.

Decoding (formats, transparency over a *white* background by default, CMYK and palettes,
16-bit scaling, EXIF orientation, the pixel limit) is `difforge.io.decode`'s, the
decoder the task commands and the HTTP API share.

With `channels=None` the set is grayscale (1) when every image is: grayscale modes, or
colour images whose three channels are equal; otherwise RGB (3).

Captions (text-to-image): a `metadata.jsonl` at the root or a `.txt` beside each image
(`difforge.data.captions`); in a captioned folder images without a usable caption are
skipped and reported like undecodable ones, and the dataset's `captions` hold the rest's.

Sizing: each image is center-cropped to its largest centred square and resized to
`size` x `size` with Lanczos in one step. The default `size` is the median of the images'
shorter sides, capped at 64 (DEFAULT_MAX_SIZE): never larger than needed for a laptop,
and robust to a few odd thumbnails, which are upscaled.
"""

from __future__ import annotations

import os
import statistics
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from difforge.data.captions import METADATA_FILE, read_folder_captions
from difforge.data.dataset import ImageDataset
from difforge.io.decode import MAX_PIXELS, decode_image, open_image

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
DEFAULT_MAX_SIZE = 64  # the default load size is min(this, median shorter side)

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


def stack_pixels(arrays: list[np.ndarray], channels: int | None) -> torch.Tensor:
    """Decoded images, uint8 (S, S) or (S, S, 3) each -> one uint8 tensor (N, C, S, S);
    channels None: 1 when every image is gray (see `_is_gray`), else 3."""
    if channels is None:
        channels = 1 if all(_is_gray(a) for a in arrays) else 3
    if channels == 1:
        stacked = np.stack([a if a.ndim == 2 else a[..., 0] for a in arrays])[:, None]  # (N,1,H,W)
    else:
        rgb = [np.repeat(a[..., None], 3, axis=2) if a.ndim == 2 else a for a in arrays]
        stacked = np.stack(rgb).transpose(0, 3, 1, 2)  # (N, H, W, 3) -> (N, 3, H, W)
    return torch.from_numpy(np.ascontiguousarray(stacked))


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
    captions: bool | None = None,
) -> tuple[ImageDataset, Skipped]:
    """Load every image under `root` into memory as uint8 (N, C, size, size).

    channels: 1 (grayscale) or 3 (RGB); None: 1 when every image is grayscale, else 3.
    size: square side; None: min(DEFAULT_MAX_SIZE, median of the images' shorter sides).
    background: gray level (0..255) that transparent pixels are composited over.
    captions: None reads captions when the folder has them (`metadata.jsonl` or `.txt`
      files beside images), True requires them, False ignores them (caption files are
      then reported as unsupported files).
    Returns (dataset, skipped) where skipped lists (path, reason) for every file not used
    and every caption problem.
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
    texts: dict[Path, str] | None = None
    if captions is not False:
        found = read_folder_captions(root, [p for p, _ in files], skipped)
        if found is None and captions:
            raise ValueError(f"no captions in {root}: expected a {METADATA_FILE} or a .txt beside each image")
        if found is not None:
            texts = found.captions
            skipped = [(p, r) for p, r in skipped if Path(p) not in found.used] + found.problems
            files = [(p, cls) for p, cls in files if p in texts]
            if not files:
                first = f"; first: {found.problems[0][0]}: {found.problems[0][1]}" if found.problems else ""
                raise ValueError(f"no captioned images in {root} ({len(found.problems)} caption problems{first})")

    if size is None:  # headers only: cheap
        sides, readable = [], []
        for path, cls in files:
            try:
                with open_image(path, max_pixels=max_pixels) as im:
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
    kept: list[Path] = []
    for path, cls in files:
        try:
            arrays.append(_decode(path, size, channels, background, max_pixels))
            classes.append(cls)
            kept.append(path)
        except MemoryError:
            raise
        except Exception as e:
            skipped.append((str(path), _error(e)))
    if not arrays:
        first = f"; first: {skipped[0][0]}: {skipped[0][1]}" if skipped else ""
        raise ValueError(f"no readable images in {root} ({len(skipped)} files skipped{first})")

    stacked = stack_pixels(arrays, channels)
    labels = class_names = None
    if classes[0] is not None:
        class_names = sorted(set(classes))  # classes whose images all failed are dropped
        index = {c: i for i, c in enumerate(class_names)}
        labels = torch.tensor([index[c] for c in classes], dtype=torch.int64)
    dataset = ImageDataset(
        images=stacked,
        labels=labels,
        class_names=class_names,
        name=root.resolve().name or str(root),
        captions=None if texts is None else [texts[p] for p in kept],
    )
    return dataset, skipped
