"""The image-task commands: inpaint, restore, denoise, upscale, interpolate. Each declares
its own options; `run_task` runs its function in `difforge.tasks.files`."""

from __future__ import annotations

import click

from difforge.cli.common import SAMPLER_NAMES, _fail, cli, no_progress_option
from difforge.defaults import DEFAULT_CFG, DEFAULT_CFG_TEXT


def task_options(sampler_default: str):
    """Options shared by inpaint, restore, denoise and upscale."""
    opts = [
        click.argument("model_dir", type=click.Path()),
        click.option("--out", required=True, help="Output: a PNG (one image), a grid PNG (several), or .npz."),
        click.option("--class", "klass", help="Class (index or name) for a class-conditional model. "
                     "[default: none, the unconditional model]"),
        click.option("--prompt", "prompts", multiple=True, help="Text-to-image models: what the result shows; once "
                     "for all images, or once per image of an .npz batch. [default: the empty prompt, unconditional]"),
        click.option("--negative-prompt", help="Text-to-image models: what to guide away from (replaces the empty "
                     "prompt in guidance)."),
        click.option("--cfg", type=float, help="Classifier-free guidance scale with --class or --prompt. "
                     f"[default: {DEFAULT_CFG:g} with --class, {DEFAULT_CFG_TEXT:g} with --prompt; 1, none, with "
                     "neither and no --negative-prompt]"),
        click.option("--sampler", type=click.Choice(SAMPLER_NAMES), help=f"[default: {sampler_default}]"),
        click.option("--steps", type=int, help="Sampler steps (of the whole noise range)."),
        click.option("--eta", type=float, help="Fresh noise per step, for ddim and euler-a."),
        click.option("--seed", type=int, default=0, show_default=True, help="Image i uses seed + i."),
        click.option("--ema/--no-ema", default=True, show_default=True, help="Use the EMA weights of a run."),
        click.option("--device", default="auto", show_default=True),
        no_progress_option,
    ]

    def wrap(f):
        for o in reversed(opts):
            f = o(f)
        return f

    return wrap


class StepBar:
    """A progress callback for the tasks: a tqdm bar counting sampler steps, made at the
    first step (when the task's "total" is known, and not at all when it fails before)."""

    def __init__(self, desc: str, disable: bool):
        self.desc, self.disable, self.bar = desc, disable, None

    def __call__(self, d: dict) -> None:
        if self.bar is None:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=d.get("total"), desc=self.desc, unit="step", dynamic_ncols=True,
                            disable=self.disable)
        self.bar.update(1)

    def __enter__(self) -> StepBar:
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()


def run_task(name: str, *, model_dir: str, out: str, no_progress: bool, klass: str | None = None,
             cfg: float | None = None, sampler: str | None = None, steps: int | None = None, eta: float | None = None,
             seed: int = 0, ema: bool = True, device: str = "auto", prompts: tuple[str, ...] = (),
             negative_prompt: str | None = None, **task_args) -> None:
    """Run the task `name` (`difforge.tasks.files.<name>_files`, which checks its output
    paths before it loads the model) under a progress bar; print what it wrote."""
    import difforge.tasks.files as files

    common = files.Common(model_dir=model_dir, klass=klass, cfg=cfg, sampler=sampler, steps=steps, seed=seed,
                          ema=ema, device=device, eta=eta, prompts=prompts, negative_prompt=negative_prompt)
    try:
        with StepBar(name, disable=no_progress) as bar:
            written = getattr(files, f"{name}_files")(common, out=out, callback=bar, **task_args)
    except (ValueError, FileNotFoundError) as e:
        _fail(e)
    click.echo("wrote " + " and ".join(map(str, written if isinstance(written, tuple) else [written])))


@cli.command()
@task_options("ddpm")
@click.option("--image", required=True, type=click.Path(),
              help="Image (PNG...) at the model's size, or an .npz batch.")
@click.option("--mask", required=True, help="Mask PNG (white = fill, black = keep) or a preset: "
              "center, left, right, top, bottom, strokes, lines.")
@click.option("--method", type=click.Choice(["repaint", "blend"]), default="repaint", show_default=True,
              help="RePaint (with resampling) or blended replacement at every step.")
@click.option("--jump-length", type=int, default=5, show_default=True, help="RePaint: levels per jump back.")
@click.option("--resample", type=int, default=5, show_default=True, help="RePaint: times each stretch is sampled.")
def inpaint(**kw) -> None:
    """Fill the masked part of an image (RePaint, Lugmayr et al. 2022); a text model fills in what --prompt says."""
    run_task("inpaint", **kw)


@cli.command()
@task_options("ddim")
@click.option("--image", required=True, type=click.Path(), help="Image at the model's size, or an .npz batch.")
@click.option("--strength", required=True, type=float,
              help="Noise to add, in (0, 1]: 0.3 keeps most, 1 keeps nothing.")
def restore(**kw) -> None:
    """Restore or edit an image by noising it part-way and sampling back (SDEdit); with --prompt, towards it."""
    run_task("restore", **kw)


@cli.command()
@task_options("ddim")
@click.option("--image", required=True, type=click.Path(), help="Noisy image at the model's size, or an .npz batch.")
@click.option("--sigma", required=True, type=float, help="Std of its Gaussian noise in [0, 1] pixel units (e.g. 0.1).")
def denoise(**kw) -> None:
    """Remove Gaussian noise of known std; --steps 1 (default) gives the posterior mean."""
    run_task("denoise", **kw)


@cli.command()
@task_options("ddpm")
@click.option("--image", type=click.Path(), help="Low-resolution image (size / scale), or an .npz batch.")
@click.option("--scale", type=int, default=2, show_default=True, help="Upscaling factor.")
@click.option("--base", type=click.Path(), help="Cascade: generate the low-resolution images with this model.")
@click.option("--n", "n", type=int, default=8, show_default=True, help="Images to generate with --base.")
def upscale(**kw) -> None:
    """Super-resolution: with an SR model (train --task superres), or zero-shot (ILVR) with a generative one."""
    run_task("upscale", **kw)


@cli.command()
@click.argument("model_dir", type=click.Path())
@click.option("--a", "a", required=True, type=click.Path(), help="First image (or .npz batch).")
@click.option("--b", "b", required=True, type=click.Path(), help="Last image (or .npz batch of the same length).")
@click.option("--frames", type=int, default=8, show_default=True, help="Images from a to b, both included.")
@click.option("--out", required=True, help="Animated GIF to write; a strip PNG goes beside it.")
@click.option("--strip", type=click.Path(dir_okay=False), help="Strip PNG path. [default: OUT with .png]")
@click.option("--class", "klass", help="Class for a class-conditional model. [default: unconditional]")
@click.option("--prompt", "prompts", multiple=True, help="Text-to-image models: a prompt for all pairs, or one per "
              "pair. [default: the empty prompt, unconditional]")
@click.option("--steps", type=int, help="DDIM steps for inversion and decoding. [default: 50]")
@click.option("--ema/--no-ema", default=True, show_default=True, help="Use the EMA weights of a run.")
@click.option("--device", default="auto", show_default=True)
@no_progress_option
def interpolate(**kw) -> None:
    """In-between images: DDIM inversion of both, slerp of the latents, decoding."""
    run_task("interpolate", **kw)
