"""The image-task commands: inpaint, restore, denoise, upscale, interpolate."""

from __future__ import annotations

import click

from difforge.cli.common import SAMPLER_NAMES, _fail, cli


def _task_options(sampler_default: str):
    """Options shared by inpaint, restore, denoise and upscale."""
    opts = [
        click.argument("model_dir", type=click.Path()),
        click.option("--out", required=True, help="Output: a PNG (one image), a grid PNG (several), or .npz."),
        click.option("--class", "klass", help="Class (index or name) for a class-conditional model. "
                     "[default: none, the unconditional model]"),
        click.option("--cfg", type=float, help="Classifier-free guidance scale with --class. [default: 3]"),
        click.option("--sampler", type=click.Choice(SAMPLER_NAMES), help=f"[default: {sampler_default}]"),
        click.option("--steps", type=int, help="Sampler steps (of the whole noise range)."),
        click.option("--eta", type=float, help="Fresh noise per step, for ddim and euler-a."),
        click.option("--seed", type=int, default=0, show_default=True, help="Image i uses seed + i."),
        click.option("--ema/--no-ema", default=True, show_default=True, help="Use the EMA weights of a run."),
        click.option("--device", default="auto", show_default=True),
    ]

    def wrap(f):
        for o in reversed(opts):
            f = o(f)
        return f

    return wrap


def _common(model_dir, klass, cfg, sampler, steps, eta, seed, ema, device):
    from difforge.tasks.files import Common

    return Common(model_dir, klass, cfg, sampler, steps, seed, ema, device, eta)


@cli.command()
@_task_options("ddpm")
@click.option("--image", required=True, type=click.Path(), help="Image (PNG...) at the model's size, or an .npz batch.")
@click.option("--mask", required=True, help="Mask PNG (white = fill, black = keep) or a preset: "
              "center, left, right, top, bottom, strokes, lines.")
@click.option("--method", type=click.Choice(["repaint", "blend"]), default="repaint", show_default=True,
              help="RePaint (with resampling) or blended replacement at every step.")
@click.option("--jump-length", type=int, default=5, show_default=True, help="RePaint: levels per jump back.")
@click.option("--resample", type=int, default=5, show_default=True, help="RePaint: times each stretch is sampled.")
def inpaint(model_dir, out, klass, cfg, sampler, steps, eta, seed, ema, device, image, mask, method, jump_length,
            resample) -> None:
    """Fill the masked part of an image (RePaint, Lugmayr et al. 2022)."""
    from difforge.tasks.files import inpaint_files

    try:
        path = inpaint_files(_common(model_dir, klass, cfg, sampler, steps, eta, seed, ema, device), image, mask, out,
                             method, jump_length, resample)
    except (ValueError, FileNotFoundError) as e:
        _fail(e)
    click.echo(f"wrote {path}")


@cli.command()
@_task_options("ddim")
@click.option("--image", required=True, type=click.Path(), help="Image at the model's size, or an .npz batch.")
@click.option("--strength", required=True, type=float, help="Noise to add, in (0, 1]: 0.3 keeps most, 1 keeps nothing.")
def restore(model_dir, out, klass, cfg, sampler, steps, eta, seed, ema, device, image, strength) -> None:
    """Restore or edit an image by noising it part-way and sampling back (SDEdit)."""
    from difforge.tasks.files import restore_files

    try:
        path = restore_files(_common(model_dir, klass, cfg, sampler, steps, eta, seed, ema, device), image, strength, out)
    except (ValueError, FileNotFoundError) as e:
        _fail(e)
    click.echo(f"wrote {path}")


@cli.command()
@_task_options("ddim")
@click.option("--image", required=True, type=click.Path(), help="Noisy image at the model's size, or an .npz batch.")
@click.option("--sigma", required=True, type=float, help="Std of its Gaussian noise in [0, 1] pixel units (e.g. 0.1).")
def denoise(model_dir, out, klass, cfg, sampler, steps, eta, seed, ema, device, image, sigma) -> None:
    """Remove Gaussian noise of known std; --steps 1 (default) gives the posterior mean."""
    from difforge.tasks.files import denoise_files

    try:
        path = denoise_files(_common(model_dir, klass, cfg, sampler, steps, eta, seed, ema, device), image, sigma, out)
    except (ValueError, FileNotFoundError) as e:
        _fail(e)
    click.echo(f"wrote {path}")


@cli.command()
@_task_options("ddpm")
@click.option("--image", type=click.Path(), help="Low-resolution image (size / scale), or an .npz batch.")
@click.option("--scale", type=int, default=2, show_default=True, help="Upscaling factor.")
@click.option("--base", "base_dir", type=click.Path(), help="Cascade: generate the low-resolution images with this model.")
@click.option("--n", "n", type=int, default=8, show_default=True, help="Images to generate with --base.")
def upscale(model_dir, out, klass, cfg, sampler, steps, eta, seed, ema, device, image, scale, base_dir, n) -> None:
    """Super-resolution: with an SR model (train --task superres), or zero-shot (ILVR) with a generative one."""
    from difforge.tasks.files import upscale_files

    try:
        path = upscale_files(_common(model_dir, klass, cfg, sampler, steps, eta, seed, ema, device), image, scale, out,
                             base_dir, n)
    except (ValueError, FileNotFoundError) as e:
        _fail(e)
    click.echo(f"wrote {path}")


@cli.command()
@click.argument("model_dir", type=click.Path())
@click.option("--a", "a", required=True, type=click.Path(), help="First image (or .npz batch).")
@click.option("--b", "b", required=True, type=click.Path(), help="Last image (or .npz batch of the same length).")
@click.option("--frames", type=int, default=8, show_default=True, help="Images from a to b, both included.")
@click.option("--out", required=True, help="Animated GIF to write; a strip PNG goes beside it.")
@click.option("--strip", type=click.Path(dir_okay=False), help="Strip PNG path. [default: OUT with .png]")
@click.option("--class", "klass", help="Class for a class-conditional model. [default: unconditional]")
@click.option("--steps", type=int, help="DDIM steps for inversion and decoding. [default: 50]")
@click.option("--ema/--no-ema", default=True, show_default=True, help="Use the EMA weights of a run.")
@click.option("--device", default="auto", show_default=True)
def interpolate(model_dir, a, b, frames, out, strip, klass, steps, ema, device) -> None:
    """In-between images: DDIM inversion of both, slerp of the latents, decoding."""
    from difforge.tasks.files import interpolate_files

    try:
        gif, png = interpolate_files(_common(model_dir, klass, None, None, steps, None, 0, ema, device), a, b, frames,
                                     out, strip)
    except (ValueError, FileNotFoundError) as e:
        _fail(e)
    click.echo(f"wrote {gif} and {png}")
