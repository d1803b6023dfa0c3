"""The conditioning value of a text super-resolution model (`TextImageCond`): a batch of
prompts and a batch of conditioning images, row by row.

Imagen's super-resolution stages (Saharia et al. 2022, "Photorealistic text-to-image
diffusion models with deep language understanding", Section 2.5) are conditioned on the
caption as well as on the low-resolution image: the network reads the image as extra
input channels (SR3) and the prompt through cross-attention and the pooled text vector,
as a text-to-image UNet does. Classifier-free guidance on the text then compares the
prompt with the empty (or a negative) prompt, the same image in both passes: the null of
such a model is a `TextImageCond` of the null text and the batch's own images.

`TextImageCond` is a structured cond batch (`len`, rows by slice or integer / boolean
tensor, `to`, a static `cat`), so samplers pass it through and `CFGDenoiser` batches it
with its null.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from difforge.models.text import TextCond


@dataclass(frozen=True, eq=False)
class TextImageCond:
    """`text` (a `TextCond` of B prompts) and `image` (B, C, H, W) float in model space,
    the conditioning image of each row (SR3's bicubic upsampling of the low-resolution
    image, at the model's input size)."""

    text: TextCond
    image: torch.Tensor

    def __post_init__(self) -> None:
        if not isinstance(self.text, TextCond):
            raise ValueError(f"TextImageCond.text must be a TextCond, got {type(self.text).__name__}")
        im = self.image
        if not isinstance(im, torch.Tensor) or im.ndim != 4 or im.shape[0] != len(self.text):
            got = tuple(im.shape) if isinstance(im, torch.Tensor) else type(im).__name__
            raise ValueError(f"TextImageCond.image must be ({len(self.text)}, C, H, W), one per prompt, got {got}")

    def __len__(self) -> int:
        return len(self.text)

    @property
    def device(self) -> torch.device:
        return self.text.device

    def __getitem__(self, index) -> TextImageCond:
        """Rows `index` (slice, int / bool tensor, or an int: one row as a batch of 1)."""
        text = self.text[index]  # an out-of-range int is its IndexError
        if isinstance(index, int):
            index = slice(index % len(self), index % len(self) + 1)
        elif isinstance(index, torch.Tensor):
            index = index.to(self.image.device)
        return TextImageCond(text, self.image[index])

    def to(self, device: torch.device | str | None) -> TextImageCond:
        return TextImageCond(self.text.to(device), self.image.to(device))

    @staticmethod
    def cat(items: Sequence[TextImageCond]) -> TextImageCond:
        """One batch of `items` in order (the prompts padded to one token length)."""
        items = list(items)
        if not items:
            raise ValueError("TextImageCond.cat needs at least one batch")
        device = items[0].image.device
        return TextImageCond(TextCond.cat([c.text for c in items]), torch.cat([c.image.to(device) for c in items]))
