"""Colour, size and position of the garment in fashion-colour images, measured from pixels.

For evaluating text-to-image models trained on `difforge.data.fashion_colour`: generate
from `AttributePrompt`s, measure the images, compare with `prompt_targets(prompts)`.

- garment pixels: brightness (the largest of R, G, B) above `threshold`; the background
  is black;
- colour: the circular mean of the garment pixels' hues, each weighted by its chroma
  (max - min of R, G, B, so gray pixels do not vote), then the nearest hue of
  `fashion_colour.COLOURS`; -1 when no pixel has any chroma;
- size: the bounding box of the garment pixels, counting only rows and columns with at
  least `min_line` of them (a stray speck does not stretch it); its longer side above
  `LARGE_MIN_EXTENT` (20 of 32 pixels, between the small box's 16 and the 24 that 99.9%
  of large Fashion-MNIST garments exceed) is large; -1 when no garment pixel;
- position: centre for large garments; for small ones the position whose box centre
  (`fashion_colour.POSITION_BOXES`) is nearest the bounding box's centre;
- garment (when a `GarmentClassifier` is given, `eval.garment`): the class a classifier of
  the images' luminance, max(R, G, B), gives them: the garment's own gray levels, blind to
  its colour.
Lengths scale with the image side, so images of another size are measured alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from difforge.data.fashion_colour import COLOURS, IMAGE_SIZE, LARGE, POSITION_BOXES, SMALL, SMALL_SIDE

DEFAULT_THRESHOLD = 32  # brightness 0..255 above which a pixel belongs to the garment
LARGE_MIN_EXTENT = 20  # bounding-box side (pixels of a 32x32 image) above which a garment is large
ATTRIBUTES = ("garment", "colour", "size", "position")
PAIR = "garment+colour"  # the two attributes a prompt's key words name


@dataclass(frozen=True)
class MeasuredAttributes:
    """Per image: the attribute indices (-1: nothing measurable) and what they came from."""

    colour: torch.Tensor  # int64 (N,), index into COLOURS
    size: torch.Tensor  # int64 (N,), 0 small, 1 large
    position: torch.Tensor  # int64 (N,), index into POSITIONS
    hue: torch.Tensor  # float64 (N,), degrees in [0, 360); nan without chroma
    extent: torch.Tensor  # int64 (N,), longer side of the bounding box in pixels; 0 when empty
    centre: torch.Tensor  # float64 (N, 2), (row, column) of the bounding box's centre; nan when empty
    garment: torch.Tensor | None = None  # int64 (N,), index into GARMENTS; None when not measured

    def as_dict(self) -> dict[str, torch.Tensor]:
        """{"garment" (when measured), "colour", "size", "position"} -> int64 (N,), keyed like
        the dataset's attributes."""
        return {k: getattr(self, k) for k in ATTRIBUTES if getattr(self, k) is not None}


def _hues(rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(hue in degrees, chroma) of float (N, 3, H, W) pixels, each (N, H, W)."""
    r, g, b = rgb.unbind(1)
    hi, lo = rgb.max(1).values, rgb.min(1).values
    chroma = hi - lo
    safe = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    hue = torch.where(hi == r, ((g - b) / safe) % 6, torch.where(hi == g, (b - r) / safe + 2, (r - g) / safe + 4))
    return hue * 60, chroma


def _span(lines: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(first, last) index of the True entries of bool (N, L), (L, -1) for none."""
    index = torch.arange(lines.shape[1])
    first = torch.where(lines, index, lines.shape[1]).min(1).values
    last = torch.where(lines, index, -1).max(1).values
    return first, last


def measure_attributes(images: torch.Tensor, *, threshold: int = DEFAULT_THRESHOLD, min_line: int = 2,
                       garment_classifier=None) -> MeasuredAttributes:
    """Measure colour, size and position in uint8 RGB images (N, 3, H, W) with H == W, and
    the garment class with `garment_classifier` (an `eval.garment.GarmentClassifier`) when given."""
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3 or images.shape[2] != images.shape[3]:
        raise ValueError(f"images must be uint8 (N, 3, S, S), got {images.dtype} {tuple(images.shape)}")
    scale = images.shape[2] / IMAGE_SIZE
    x = images.to(torch.float64)
    garment = x.max(1).values > threshold  # (N, H, W)

    hue, chroma = _hues(x)
    w = chroma * garment
    angle = torch.deg2rad(hue)
    s, c = (w * torch.sin(angle)).sum((1, 2)), (w * torch.cos(angle)).sum((1, 2))
    has_colour = w.sum((1, 2)) > 0
    mean_hue = torch.where(has_colour, torch.rad2deg(torch.atan2(s, c)) % 360, math.nan)
    targets = torch.tensor([col.hue for col in COLOURS], dtype=torch.float64)
    gap = (mean_hue[:, None] - targets[None]).abs() % 360
    colour = torch.where(has_colour, torch.minimum(gap, 360 - gap).argmin(1), -1)

    r0, r1 = _span(garment.sum(2) >= min_line)
    c0, c1 = _span(garment.sum(1) >= min_line)
    found = (r1 >= r0) & (c1 >= c0)
    extent = torch.where(found, torch.maximum(r1 - r0, c1 - c0) + 1, 0)
    centre = torch.stack([(r0 + r1) / 2, (c0 + c1) / 2], 1).to(torch.float64)
    centre[~found] = math.nan
    large = extent > LARGE_MIN_EXTENT * scale
    size = torch.where(found, torch.where(large, LARGE, SMALL), -1)

    anchors = torch.tensor([(r + (SMALL_SIDE - 1) / 2, c + (SMALL_SIDE - 1) / 2) for r, c in POSITION_BOXES],
                           dtype=torch.float64) * scale + (scale - 1) / 2
    nearest = torch.cdist(torch.nan_to_num(centre), anchors).argmin(1)
    position = torch.where(found, torch.where(large, 0, nearest), -1)
    garment = None if garment_classifier is None else garment_classifier.predict(images)
    return MeasuredAttributes(colour=colour, size=size, position=position, hue=mean_hue, extent=extent,
                              centre=centre, garment=garment)


def attribute_correct(measured: MeasuredAttributes | dict[str, torch.Tensor],
                      targets: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per image, bool (N,): whether each attribute present in both `measured` and `targets`
    is right (in `ATTRIBUTES` order), "garment+colour" when both of those are compared, and
    "all": every compared attribute right (their product)."""
    got = measured.as_dict() if isinstance(measured, MeasuredAttributes) else measured
    keys = [k for k in ATTRIBUTES if k in got and k in targets]
    if not keys:
        raise ValueError(f"nothing to compare: measured {sorted(got)}, targets {sorted(targets)}")
    right = {k: got[k] == targets[k].to(got[k].device) for k in keys}
    if "garment" in right and "colour" in right:
        right[PAIR] = right["garment"] & right["colour"]
    right["all"] = torch.stack([right[k] for k in keys]).all(0)
    return right


def attribute_accuracy(measured: MeasuredAttributes | dict[str, torch.Tensor],
                       targets: dict[str, torch.Tensor]) -> dict[str, float]:
    """Fraction of images whose measured garment, colour, size and position equal `targets`
    (each attribute present in both), "garment+colour" (both right, when both are compared)
    and "all": the fraction with every compared attribute right (`attribute_correct`)."""
    return {k: float(v.double().mean()) for k, v in attribute_correct(measured, targets).items()}
