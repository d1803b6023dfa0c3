"""Super-resolution: zero-shot with a generative model (ILVR, `difforge.tasks.ilvr`), or
with an SR3-style model (Saharia et al. 2022, "Image super-resolution via iterative
refinement") trained on pairs and conditioned on the upsampled low-resolution image by
channel concatenation, and also on the caption for a text super-resolution model
(Imagen's super-resolution stages); and the cascade of a base model and an upscaler (the
structure of Imagen and DALL-E 2), where the prompts reach both stages of text models."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from difforge.io.formats import as_float, given_back
from difforge.io.space import from_uint8
from difforge.tasks.common import counted
from difforge.tasks.ilvr import superres_ilvr

TASKS = ("generate", "superres")


def is_superres_model(pipe) -> bool:
    return pipe.card.task == "superres"


def upscale(pipe, low, scale: int, **kwargs):
    """Upscale `low` (N, C, h, w) in [-1, 1] by `scale`: with an SR3 model when `pipe` is one
    (trained with `--task superres`), else ILVR with the generative model. `low` may also be
    uint8 pixels (tensor, numpy array, PIL images): the result is then of the same kind,
    else float in [-1, 1]."""
    x, given = as_float(low, pipe.card.channels, "low-resolution image")
    if is_superres_model(pipe):
        return given_back(sr3_upscale(pipe, x, scale, **kwargs), given)
    return given_back(superres_ilvr(pipe, x, scale, **kwargs), given)


def cascade_low(base_dir: str, n: int, c, size: int) -> torch.Tensor:
    """`n` images from the base model at `base_dir` (seed c.seed, its default sampler and
    guidance; class c.klass, or prompts c.prompts and c.negative_prompt, if given), float
    in [-1, 1] at `size` (area resizing when the base model's images differ): the first
    stage of a cascade."""
    from difforge.pipeline import load_pipeline

    base = load_pipeline(base_dir, ema=c.ema)
    labels = None
    if c.klass is not None and not base.num_classes:
        base.parse_class(c.klass)  # its one-line error: a text or unconditional model takes no class
    if base.num_classes:
        labels = base.default_labels(per_class=-(-n // base.num_classes))[:n]
        if c.klass is not None:
            labels = torch.full((n,), base.parse_class(c.klass), dtype=torch.long)
    text = {"prompts": list(c.prompts) or None, "negative_prompt": c.negative_prompt}
    images, _ = base.generate(n=n, labels=labels, seed=c.seed, **text)
    x = from_uint8(images)
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="area" if x.shape[-1] > size else "bicubic").clamp(-1, 1)
    return x


def sr3_upscale(
    pipe,
    low: torch.Tensor,
    scale: int | None = None,
    *,
    labels: torch.Tensor | None = None,
    prompts=None,
    negative_prompt: str | None = None,
    truncate_prompts: bool = False,
    cfg: float | None = None,
    sampler: str | None = None,
    steps: int | None = None,
    seed: int = 0,
    callback=None,
    **options,
) -> torch.Tensor:
    """Upscale `low` (N, C, size/scale, size/scale) in [-1, 1] with an SR3 model
    (`Pipeline.upscale`; its conditioning is `difforge.models.conditioning.LowResImage`):
    the sampler (default ddpm, 50 steps) runs the model with the bicubic upsampling of
    `low` as its conditioning image. Image i uses seed + i. A text super-resolution model
    (`--task superres --text-encoder ...`; `difforge.models.conditioning.TextLowResImage`)
    also takes `prompts` (one for all images, or one per image) and `negative_prompt`;
    without them it runs on the empty prompt, unguided unless `cfg` is given."""
    if not is_superres_model(pipe):
        raise ValueError("this is not a super-resolution model (train one with --task superres)")
    want = pipe.card.conditioning.scale
    if scale is not None and scale != want:
        raise ValueError(f"this super-resolution model upscales x{want}, not x{scale}")
    if labels is not None:
        raise ValueError("a super-resolution model takes no class labels")
    if not pipe.takes_text and (prompts is not None or negative_prompt is not None):
        raise ValueError("this super-resolution model is not a text-to-image model: it takes no prompt")
    if pipe.takes_text:
        options.update(prompts=prompts, negative_prompt=negative_prompt, truncate_prompts=truncate_prompts)
    sampler, steps = sampler or "ddpm", steps or 50
    total = len(pipe.sigmas(sampler, steps)) - 1  # one callback per sampler step
    return pipe.upscale(low, cfg=cfg, sampler=sampler, steps=steps, seed=seed, callback=counted(callback, total),
                        **options)
