"""Super-resolution: zero-shot with a generative model (ILVR, `difforge.tasks.ilvr`), or
with an SR3-style model (Saharia et al. 2022, "Image super-resolution via iterative
refinement") trained on pairs and conditioned on the upsampled low-resolution image by
channel concatenation; and the cascade of a base model and an upscaler (the structure of
Imagen and DALL-E 2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from difforge.tasks.ilvr import superres_ilvr


def is_superres_model(pipe) -> bool:
    return pipe.info.get("task") == "superres"


def upsample_bicubic(low: torch.Tensor, size: int) -> torch.Tensor:
    """The conditioning image (and the classical baseline): bicubic to `size`, clamped."""
    return F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False).clamp(-1, 1)


def upscale(pipe, low: torch.Tensor, scale: int, **kwargs) -> torch.Tensor:
    """Upscale `low` (N, C, h, w) in [-1, 1] by `scale`: with an SR3 model when `pipe` is one
    (trained with `--task superres`), else ILVR with the generative model."""
    if is_superres_model(pipe):
        from difforge.tasks.sr3 import sr3_upscale

        return sr3_upscale(pipe, low, scale, **kwargs)
    return superres_ilvr(pipe, low, scale, **kwargs)


def cascade_low(base_dir: str, n: int, c) -> torch.Tensor:
    """`n` images from the base model at `base_dir` (seed c.seed, its default sampler and
    guidance; class c.klass if given), float in [-1, 1]: the first stage of a cascade."""
    from difforge.pipeline import load_pipeline

    base = load_pipeline(base_dir, ema=c.ema)
    labels = None
    if base.num_classes:
        labels = base.default_labels(per_class=-(-n // base.num_classes))[:n]
        if c.klass is not None:
            labels = torch.full((n,), base.parse_class(c.klass), dtype=torch.long)
    images, _ = base.generate(n=n, labels=labels, seed=c.seed)
    return images.float() / 127.5 - 1
