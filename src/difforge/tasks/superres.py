"""Super-resolution: zero-shot with a generative model (ILVR, `difforge.tasks.ilvr`), or
with an SR3-style model (Saharia et al. 2022, "Image super-resolution via iterative
refinement") trained on pairs and conditioned on the upsampled low-resolution image by
channel concatenation; and the cascade of a base model and an upscaler (the structure of
Imagen and DALL-E 2)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from difforge.sampling import randn_like
from difforge.tasks.common import check_images, counted, from_model, generators, prior_std, setup, to_model
from difforge.tasks.ilvr import downsample, superres_ilvr

TASKS = ("generate", "superres")


def is_superres_model(pipe) -> bool:
    return pipe.info.get("task") == "superres"


def upsample_bicubic(low: torch.Tensor, size: int) -> torch.Tensor:
    """The conditioning image (and the classical baseline): bicubic to `size`, clamped."""
    return F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False).clamp(-1, 1)


def upscale(pipe, low: torch.Tensor, scale: int, **kwargs) -> torch.Tensor:
    """Upscale `low` (N, C, h, w) in [-1, 1] by `scale`: with an SR3 model when `pipe` is one
    (trained with `--task superres`), else ILVR with the generative model."""
    if is_superres_model(pipe):
        return sr3_upscale(pipe, low, scale, **kwargs)
    return superres_ilvr(pipe, low, scale, **kwargs)


def cascade_low(base_dir: str, n: int, c, size: int) -> torch.Tensor:
    """`n` images from the base model at `base_dir` (seed c.seed, its default sampler and
    guidance; class c.klass if given), float in [-1, 1] at `size` (area resizing when the
    base model's images differ): the first stage of a cascade."""
    from difforge.pipeline import load_pipeline

    base = load_pipeline(base_dir, ema=c.ema)
    labels = None
    if base.num_classes:
        labels = base.default_labels(per_class=-(-n // base.num_classes))[:n]
        if c.klass is not None:
            labels = torch.full((n,), base.parse_class(c.klass), dtype=torch.long)
    images, _ = base.generate(n=n, labels=labels, seed=c.seed)
    x = images.float() / 127.5 - 1
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="area" if x.shape[-1] > size else "bicubic").clamp(-1, 1)
    return x


# ---------------------------------------------------------------- SR3


def condition_from_x0(x0: torch.Tensor, scale: int, native: int) -> torch.Tensor:
    """SR3's conditioning image for model-space images x0 (N, C, S, S): the native-size
    region area-downsampled by `scale`, upsampled back bicubically, padded as x0 is.
    The same function makes it from a user's low-resolution image at sampling time."""
    size = x0.shape[-1]
    top = (size - native) // 2
    crop = x0[..., top : top + native, top : top + native] if size > native else x0
    up = upsample_bicubic(downsample(crop, scale), native)
    return F.pad(up, (top, size - native - top, top, size - native - top), value=-1.0) if size > native else up


def training_setup(info: dict, scale: int):
    """For `difforge train --task superres`: the model description with the SR fields
    (task, scale, cond_channels) and the function the training loop calls on each batch
    x0 to make `cond` (`condition_from_x0`)."""
    native = info["native_size"]
    if scale < 2 or native % scale:
        raise ValueError(f"--scale must be >= 2 and divide the image size {native}, got {scale}")
    if info["image_size"] < native:
        raise ValueError("super-resolution training needs a model input size >= the data's size")
    info = {**info, "task": "superres", "scale": scale, "class_names": None,
            "model": {**info["model"], "num_classes": None, "cond_channels": info["channels"]}}
    return info, lambda x0: condition_from_x0(x0, scale, native)


@torch.no_grad()
def sr3_upscale(
    pipe,
    low: torch.Tensor,
    scale: int | None = None,
    *,
    labels: torch.Tensor | None = None,
    cfg: float | None = None,
    sampler: str | None = None,
    steps: int | None = None,
    seed: int = 0,
    callback=None,
    **options,
) -> torch.Tensor:
    """Upscale `low` (N, C, size/scale, size/scale) in [-1, 1] with an SR3 model: the
    sampler (default ddpm, 50 steps) runs the model with the bicubic upsampling of `low`
    as its conditioning image. Image i uses seed + i."""
    want = pipe.info.get("scale")
    if scale is not None and scale != want:
        raise ValueError(f"this super-resolution model upscales x{want}, not x{scale}")
    if labels is not None:
        raise ValueError("a super-resolution model takes no class labels")
    native = pipe.info["native_size"]
    if not isinstance(low, torch.Tensor) or low.ndim != 4 or tuple(low.shape[-2:]) != (native // want,) * 2:
        got = tuple(low.shape) if isinstance(low, torch.Tensor) else type(low).__name__
        raise ValueError(f"low-resolution image must be (N, C, {native // want}, {native // want}) for this "
                         f"x{want} model, got {got}")
    up = check_images(pipe, upsample_bicubic(low.float(), native), "low-resolution image")
    sampler = sampler or "ddpm"
    den, sample_fn, _ = setup(pipe, len(up), None, cfg, sampler, options)
    cond = to_model(pipe, up).to(pipe.device)
    sigmas = pipe.sigmas(sampler, steps or 50)
    gens = generators(seed, len(up))
    x = randn_like(cond, gens) * prior_std(pipe, float(sigmas[0]))
    x = sample_fn(den, x, sigmas, generator=gens, callback=counted(callback, len(sigmas) - 1), cond=cond,
                  **options)
    return from_model(pipe, x.float().cpu())


def save_preview(net, schedule, info: dict, device, images: torch.Tensor, path: str | Path) -> Path:
    """During SR training: a grid of held-out images, their low-resolution versions
    (nearest) and the model's upscaling, one row each (uint8 `images`, first 10)."""
    from difforge.io import save_grid, to_uint8
    from difforge.pipeline import Pipeline

    pipe = Pipeline(net, schedule, info, device)
    scale, native = info["scale"], info["native_size"]
    truth = images[:10].float() / 127.5 - 1
    low = downsample(truth, scale)
    out = sr3_upscale(pipe, low, scale)
    nearest = low.repeat_interleave(scale, -2).repeat_interleave(scale, -1)
    return save_grid(to_uint8(torch.cat([truth, nearest, out])), path, nrow=len(truth), scale=2 if native <= 32 else 1)
