"""Pictures as Python users hold them, and the one conversion to and from model space.

A batch of images may be given as
- "float": a float tensor (N, C, H, W) in [-1, 1] (what the tasks compute in);
- "pt": a uint8 tensor (N, C, H, W), as `Pipeline.generate` returns by default;
- "np": a uint8 numpy array (N, H, W, C), or one image (H, W, C);
- "pil": a list of PIL images, or one PIL image.

`as_float` reads any of them into float [-1, 1] (k / 127.5 - 1, exact for uint8) and says
which it was (`Given`); `given_back` writes a float result out as the same kind and
layout, through `to_uint8` (rounding, clamping) for every kind but "float". PIL images
of any mode pass through the decoder's mode policy (`difforge.io.decode`: transparency
over white, 16-bit scaling, grayscale <-> RGB by Pillow's luma).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from difforge.io.space import from_uint8, to_uint8

OUTPUT_TYPES = ("pt", "np", "pil")  # what `Pipeline.generate(output_type=...)` returns


@dataclass(frozen=True)
class Given:
    """The kind of a batch a caller gave ("float", "pt", "np" or "pil") and whether it was
    one image (a PIL image, an (H, W, C) array) rather than a batch."""

    kind: str
    single: bool = False


def _is_pil(x: Any) -> bool:
    try:
        from PIL import Image
    except ImportError:
        return False
    return isinstance(x, Image.Image)


def _pil_to_uint8(images: list, channels: int | None) -> torch.Tensor:
    from difforge.io.decode import pil_to_array

    arrays = [pil_to_array(im, channels) for im in images]
    if len({a.shape for a in arrays}) > 1:
        raise ValueError(f"the PIL images differ in size or mode: {sorted({a.shape for a in arrays})}")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def as_float(image: Any, channels: int | None = None, what: str = "image") -> tuple[torch.Tensor, Given]:
    """Any supported image batch -> (float (N, C, H, W) in [-1, 1], what it was). PIL images
    are converted to `channels` (1: "L", 3: "RGB") when given. One-line ValueErrors."""
    if isinstance(image, torch.Tensor):
        if image.dtype == torch.uint8:
            if image.ndim != 4:
                raise ValueError(f"{what} must be a uint8 batch (N, C, H, W), got shape {tuple(image.shape)}")
            return from_uint8(image), Given("pt")
        return image, Given("float")
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (3, 4) or image.shape[-1] not in (1, 3):
            raise ValueError(f"{what} as a numpy array must be uint8 (N, H, W, C) or (H, W, C) with C = 1 or 3, "
                             f"got {image.dtype} {image.shape}")
        single = image.ndim == 3
        arr = image[None] if single else image
        return from_uint8(torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2)), Given("np", single)
    if _is_pil(image):
        return from_uint8(_pil_to_uint8([image], channels)), Given("pil", single=True)
    if isinstance(image, (list, tuple)) and image and all(_is_pil(im) for im in image):
        return from_uint8(_pil_to_uint8(list(image), channels)), Given("pil")
    raise ValueError(f"{what} must be a float tensor in [-1, 1], a uint8 tensor (N, C, H, W), a uint8 numpy array "
                     f"(N, H, W, C) or PIL images; got {type(image).__name__}")


def uint8_as(images: torch.Tensor, output_type: str) -> Any:
    """uint8 images (N, C, H, W) as `output_type`: "pt" (the tensor), "np" (a uint8 array
    (N, H, W, C)) or "pil" (a list of "L" or "RGB" PIL images)."""
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"unknown output_type {output_type!r}; expected one of {list(OUTPUT_TYPES)}")
    if output_type == "pt":
        return images
    arr = images.detach().cpu().permute(0, 2, 3, 1).contiguous().numpy()
    if output_type == "np":
        return arr
    from PIL import Image

    return [Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a) for a in arr]


def given_back(x: torch.Tensor, given: Given) -> Any:
    """A float result (N, C, H, W) in [-1, 1] as the caller gave its input: the tensor
    itself for "float", else uint8 pixels as "pt", "np" or "pil" (one image for one image).
    Leading dimensions beyond the batch (interpolation's frames) give a list, one per entry,
    for "pil", and stay in the array for the others."""
    if given.kind == "float":
        return x
    if x.ndim > 4:
        if given.kind == "pil":
            return [given_back(frame, given) for frame in x]
        return torch.stack([given_back(frame, given) for frame in x]) if given.kind == "pt" else \
            np.stack([given_back(frame, given) for frame in x])
    out = uint8_as(to_uint8(x), given.kind)
    return out[0] if given.single else out
