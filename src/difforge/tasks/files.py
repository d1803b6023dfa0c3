"""The image tasks on files, for the command line: read the inputs, run one task, write
the outputs. One picture file in gives one picture out at the native size (so outputs
can be fed back in); an .npz batch in gives an .npz (when OUT ends in .npz) or a grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from difforge.io.outputs import check_output_file
from difforge.io.read import read_images, read_mask
from difforge.io.space import from_uint8
from difforge.tasks.masks import PRESETS, make_mask

OUT_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".npz")  # a picture, a grid, or an .npz batch


@dataclass(frozen=True)
class Common:
    """Options every task command shares."""

    model_dir: str
    klass: str | None = None
    cfg: float | None = None
    sampler: str | None = None
    steps: int | None = None
    seed: int = 0
    ema: bool = True
    device: str = "auto"
    eta: float | None = None
    prompts: tuple[str, ...] = ()  # one for all images, or one per image
    negative_prompt: str | None = None


def _load(c: Common):
    from difforge.pipeline import load_pipeline
    from difforge.runtime import resolve_device

    return load_pipeline(c.model_dir, ema=c.ema, device=resolve_device(c.device))


def _kwargs(pipe, c: Common, n: int) -> dict:
    kw: dict = {"cfg": c.cfg, "sampler": c.sampler, "steps": c.steps, "seed": c.seed}
    if c.klass is not None:
        kw["labels"] = torch.full((n,), pipe.parse_class(c.klass), dtype=torch.long)
    if c.eta is not None:
        kw["eta"] = c.eta
    kw.update(_text(c))
    return kw


def _text(c: Common) -> dict:
    """The prompt options given (a text model's; `Pipeline.condition` refuses them elsewhere)."""
    kw: dict = {}
    if c.prompts:
        kw["prompts"] = list(c.prompts)
    if c.negative_prompt is not None:
        kw["negative_prompt"] = c.negative_prompt
    return kw


def _read(pipe, path: str | Path) -> torch.Tensor:
    """Float images in [-1, 1] at the model's native size."""
    x = read_images(path, pipe.card.channels)
    size = pipe.card.native_size
    if tuple(x.shape[-2:]) != (size, size):
        raise ValueError(f"{path} is {x.shape[-1]}x{x.shape[-2]}; this model works at {size}x{size}")
    return from_uint8(x)


def write(images: torch.Tensor, out: str | Path, nrow: int = 10) -> Path:
    """Float images in [-1, 1] -> OUT: .npz (all), one picture (one image, native size) or a grid."""
    from difforge.io import save_grid, save_npz, to_uint8

    u8, out = to_uint8(images), Path(out)
    if out.suffix.lower() == ".npz":
        return save_npz(out, u8)
    if len(u8) == 1:
        out.parent.mkdir(parents=True, exist_ok=True)
        from PIL import Image

        arr = u8[0].permute(1, 2, 0).numpy()
        Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).save(out)
        return out
    return save_grid(u8, out, nrow=nrow, scale=2 if u8.shape[-1] <= 32 else 1)


def get_mask(spec: str, size: int, n: int, seed: int) -> torch.Tensor:
    """A preset name or a mask file (white = fill, black = keep; or the opaque pixels of a
    transparent PNG). Grey pixels and empty masks are refused, as by `tasks.inpaint`."""
    if spec in PRESETS:
        return make_mask(spec, size, n, seed=seed)
    if not Path(spec).is_file():
        raise ValueError(f"mask {spec!r} is neither a preset ({', '.join(PRESETS)}) nor a file")
    m = read_mask(spec)
    if tuple(m.shape[-2:]) != (size, size):
        raise ValueError(f"mask {spec} is {m.shape[-1]}x{m.shape[-2]}; the image is {size}x{size}")
    gray = read_images(spec, 1)
    if torch.equal((gray >= 128).float(), m):  # a black-and-white mask (not one read from transparency)
        grey = ((gray > 0) & (gray < 255)).float().mean().item()
        if grey > 0:
            raise ValueError(f"mask {spec}: {grey:.2%} of its pixels are grey, not black (keep) or white (fill)")
    if not m.flatten(1).any(dim=1).all():
        raise ValueError(f"mask {spec} is empty (nothing white): paint the region to fill")
    return m


def inpaint_files(c: Common, image: str, mask: str, out: str, method: str, jump_length: int, resample: int,
                  callback=None) -> Path:
    from difforge.tasks.inpaint import inpaint

    check_output_file(out, suffixes=OUT_SUFFIXES)
    pipe = _load(c)
    x = _read(pipe, image)
    m = get_mask(mask, x.shape[-1], len(x), c.seed)
    y = inpaint(pipe, x, m, method=method, jump_length=jump_length, resample=resample, callback=callback,
                **_kwargs(pipe, c, len(x)))
    return write(y, out)


def restore_files(c: Common, image: str, strength: float, out: str, callback=None) -> Path:
    from difforge.tasks.restore import restore

    check_output_file(out, suffixes=OUT_SUFFIXES)
    pipe = _load(c)
    x = _read(pipe, image)
    return write(restore(pipe, x, strength, callback=callback, **_kwargs(pipe, c, len(x))), out)


def denoise_files(c: Common, image: str, sigma: float, out: str, callback=None) -> Path:
    from difforge.tasks.restore import denoise

    check_output_file(out, suffixes=OUT_SUFFIXES)
    pipe = _load(c)
    x = _read(pipe, image)
    return write(denoise(pipe, x, sigma, callback=callback, **_kwargs(pipe, c, len(x))), out)


def interpolate_files(c: Common, a: str, b: str, frames: int, out: str, strip: str | None = None,
                      callback=None) -> tuple[Path, Path]:
    """A GIF going a -> b -> a, and a strip PNG (one row per image pair, `frames` across)."""
    from difforge.io import save_gif, save_grid, to_uint8
    from difforge.tasks.interpolate import interpolate

    check_output_file(out, suffixes=(".gif",))
    strip_path = check_output_file(strip or Path(out).with_suffix(".png"), what="--strip", suffixes=(".png",))
    pipe = _load(c)
    xa, xb = _read(pipe, a), _read(pipe, b)
    if len(xa) != len(xb):
        raise ValueError(f"{a} has {len(xa)} images, {b} has {len(xb)}")
    labels = None if c.klass is None else torch.full((len(xa),), pipe.parse_class(c.klass), dtype=torch.long)
    seq = interpolate(pipe, xa, xb, frames, labels=labels, cfg=c.cfg, steps=c.steps, callback=callback,
                      **_text(c))  # (K, N, ...)
    u8 = [to_uint8(f) for f in seq]
    scale = 4 if seq.shape[-1] <= 32 else 1
    gif = save_gif(u8 + u8[-2:0:-1], out, nrow=max(1, min(10, seq.shape[1])), scale=scale, ms=150, hold_ms=600)
    rows = to_uint8(seq.transpose(0, 1).reshape(-1, *seq.shape[2:]))  # (N * K, C, H, W), row i: pair i
    return gif, save_grid(rows, strip_path, nrow=frames, scale=scale)


def upscale_files(c: Common, image: str | None, scale: int, out: str, base: str | None = None, n: int = 8,
                  callback=None) -> Path:
    """ILVR with a generative model, or an SR3 model (a run trained with --task superres);
    with `base`, generate `n` low-resolution images with that model first (a cascade). In
    a cascade the prompts go to the base model, and to the upscaler too where it is a text
    model (ILVR with a text model)."""
    from difforge.tasks import superres

    check_output_file(out, suffixes=OUT_SUFFIXES)
    pipe = _load(c)
    if base is not None:
        if image is not None:
            raise ValueError("give --image or --base, not both")
        low = superres.cascade_low(base, n, c, pipe.card.native_size // scale)
    elif image is None:
        raise ValueError("give --image (a low-resolution picture) or --base (a model to generate them)")
    else:
        low = from_uint8(read_images(image, pipe.card.channels))
    kw = _kwargs(pipe, c, len(low))
    if base is not None and not pipe.takes_text:
        kw = {k: v for k, v in kw.items() if k not in ("prompts", "negative_prompt")}
    y = superres.upscale(pipe, low, scale, callback=callback, **kw)
    return write(y, out)
