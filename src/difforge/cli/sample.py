"""`difforge sample` and `difforge export`."""

from __future__ import annotations

import click

from difforge.cli.common import (
    GIF_FRAMES,
    GRID_NAMES,
    IMAGE_SUFFIXES,
    SAMPLER_NAMES,
    _fail,
    cli,
    no_progress_option,
    parse_interval,
)
from difforge.config import PRECISIONS
from difforge.defaults import DEFAULT_CFG, DEFAULT_CFG_INTERVAL, DEFAULT_CFG_TEXT, DEFAULT_SAMPLER

# sampler options of `sample`: (flag, keyword of the sampler functions)
SAMPLER_FLAGS = (("--eta", "eta"), ("--snr", "snr"), ("--corrector-steps", "corrector_steps"),
                 ("--n-steps-each", "n_steps_each"))


@cli.command()
@click.argument("model_dir", type=click.Path())
@click.option("--out", default="samples.png", show_default=True, help="PNG grid to write.")
@click.option("--n", "n", type=int, help="Images in all. [default: 10 per class, or 64 unconditional]")
@click.option("--class", "klass", help="Sample only this class (index or name).")
@click.option("--classes", help="Comma-separated classes (indices or names), one grid row each.")
@click.option("--prompt", "prompts", multiple=True, help="Text-to-image models: a prompt (repeat for several, one "
              "grid row each). [default: the model's example prompts]")
@click.option("--prompts-file", type=click.Path(dir_okay=False), help="Text-to-image models: prompts, one per line.")
@click.option("--negative-prompt", help="Text-to-image models: what to guide away from (replaces the empty prompt "
              "as classifier-free guidance's unconditional branch).")
@click.option("--cfg", type=float, help=f"Classifier-free guidance scale (1: none). [default: {DEFAULT_CFG:g} for "
              f"classes, {DEFAULT_CFG_TEXT:g} for prompts]")
@click.option("--cfg-rescale", type=float, default=0.0, help="Guidance rescale phi in [0, 1] (Lin et al. 2024; 0.7 is "
              "typical): pulls the guided prediction's spread back to the conditional one's. [default: 0, off]")
@click.option("--cfg-interval", help="LO,HI: guide only at noise levels sigma in [LO, HI] and run the conditional "
              "model alone (half the cost) elsewhere (Kynkaanniemi et al. 2024); all: at every level. [default: "
              f"{DEFAULT_CFG_INTERVAL[0]:g},{DEFAULT_CFG_INTERVAL[1]:g} for classes, all for prompts]")
@click.option("--threshold", type=float, help="Dynamic thresholding of x0 at this percentile of |x0| (Imagen; e.g. "
              "0.995) instead of clipping to [-1, 1]. It divides the whole image by that percentile, so images whose "
              "background sits at black or white (Fashion-MNIST) turn grey: compare with the default clipping.")
@click.option("--sampler", type=click.Choice(SAMPLER_NAMES), default=DEFAULT_SAMPLER, show_default=True,
              help="ddpm: ancestral (Ho et al. 2020); ddim (Song et al. 2021); euler, euler-a (ancestral), heun "
              "(Karras et al. 2022); dpmpp-2m, dpmpp-3m: DPM-Solver++ multistep (Lu et al. 2022); dpmpp-2m-sde: "
              "its stochastic variant, the default: the lowest FD per call in benchmarks/sampler_sweep.py (10 "
              "steps, guidance 2 at sigma in [0.3, 3]). langevin: annealed Langevin "
              "dynamics (Song & Ermon 2019, 5 calls per level); reverse-sde: Euler-Maruyama on the reverse SDE; pc: "
              "it plus a Langevin corrector (Song et al. 2021, 2 calls per step).")
@click.option("--steps", type=int, help="Sampler steps; heun makes 2 denoiser calls per step, the others 1. "
              "[default: every timestep (1000) for ddpm, 50 for ddim, euler and euler-a, 25 for heun, dpmpp-2m and "
              "dpmpp-3m, 10 for dpmpp-2m-sde]")
@click.option("--schedule", "--grid", "grid", type=click.Choice(GRID_NAMES), help="Noise levels the steps visit: "
              "leading / trailing / linspace subsets of the training timesteps, karras (rho = 7), or log-snr "
              "(uniform). [default: trailing for ddpm and ddim, karras for the others]")
@click.option("--eta", type=float, help="Fresh noise per step, for ddim (default 0: deterministic), euler-a and "
              "dpmpp-2m-sde (default 1: full ancestral / SDE noise).")
@click.option("--seed", type=int, default=0, show_default=True, help="Image i uses seed + i.")
@click.option("--ema/--no-ema", default=True, show_default=True, help="Use the EMA weights of a run.")
@click.option("--npz", type=click.Path(dir_okay=False), help="Also write images (N,H,W,C uint8) and labels to "
              "this .npz, with arr_0 (N,H,W,3 uint8) and arr_1 (labels) for OpenAI's ADM evaluator.")
@click.option("--png-dir", type=click.Path(file_okay=False), help="Also write each image as a PNG at its native size "
              "into this new or empty folder (000000.png, ...).")
@click.option("--gif", type=click.Path(dir_okay=False), help=f"Also write an animated GIF of the denoised estimate "
              f"over the steps (at most {GIF_FRAMES} frames, then the result).")
@click.option("--snr", type=float, help="pc and reverse-sde: signal-to-noise ratio of the Langevin corrector "
              "(Song et al. 2021). [default: 0.16 for pc, 0: no corrector, for reverse-sde]")
@click.option("--corrector-steps", type=int,
              help="pc and reverse-sde: Langevin corrector steps per level. [default: 1]")
@click.option("--n-steps-each", type=int, help="langevin: steps per noise level. [default: 5]")
@click.option("--device", default="auto", show_default=True)
@click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True,
              help="The network's autocast dtype while sampling (fp16 needs CUDA; auto: bf16 where the device "
              "computes it natively). The sampler itself stays float32.")
@click.option("--compile", "compile_net", is_flag=True, help="torch.compile the network first: about a minute of "
              "compilation on a CPU, then faster steps (benchmarks/inference.py); worth it for thousands of images.")
@no_progress_option
def sample(model_dir, out, n, klass, classes, prompts, prompts_file, negative_prompt, cfg, cfg_rescale, cfg_interval,
           threshold, sampler, steps, grid, seed, ema, npz,
           png_dir, gif, device, precision, compile_net, no_progress, **flags) -> None:
    """Generate images from a run directory or an exported model directory."""
    from difforge.pipeline import load_pipeline
    from difforge.runtime import resolve_device

    try:
        if n is not None and n < 1:
            raise ValueError(f"--n must be >= 1, got {n}")
        _check_outputs(out, npz, gif, png_dir)
        pipe = load_pipeline(model_dir, ema=ema, device=resolve_device(device)).use_precision(precision)
        if compile_net:
            pipe.compile()
        labels = _labels(pipe, n, klass, classes)
        text, per_row = _prompts(pipe, n, prompts, prompts_file, negative_prompt)
        options = _sampler_options(sampler, flags)
        from difforge.sampling import few_steps_warning

        warning = few_steps_warning(sampler, steps)
        if warning:
            click.echo(f"warning: {warning}", err=True)
        total = len(labels) if labels is not None else len(text) if text else (n or 64)
        if text:
            options.update(prompts=text, negative_prompt=negative_prompt)
        images, labels, frames = _generate(pipe, total, labels, bool(gif), no_progress, cfg=cfg, sampler=sampler,
                                           steps=steps, grid=grid, seed=seed, cfg_rescale=cfg_rescale,
                                           cfg_interval=parse_interval(cfg_interval), threshold=threshold,
                                           **options)
    except (ValueError, FileNotFoundError) as e:
        _fail(e)
    _write(pipe, images, labels, frames, out=out, npz=npz, png_dir=png_dir, gif=gif, per_row=per_row)


def _check_outputs(out: str, npz: str | None, gif: str | None, png_dir: str | None) -> None:
    """Every output path, before the model is loaded."""
    from difforge.io.outputs import check_output_dir, check_output_file

    check_output_file(out, suffixes=IMAGE_SUFFIXES)
    if npz:
        check_output_file(npz, what="--npz", suffixes=(".npz",))
    if gif:
        check_output_file(gif, what="--gif", suffixes=(".gif",))
    if png_dir:
        check_output_dir(png_dir, holds="sample set", is_ours=lambda p: False, what="--png-dir")


def _labels(pipe, n: int | None, klass: str | None, classes: str | None):
    """The label of every image (10 per class by default), or None for an unconditional model."""
    if klass is not None and classes is not None:
        raise ValueError("give --class or --classes, not both")
    if not pipe.num_classes:
        if klass is not None or classes is not None:
            raise ValueError("this model is unconditional: --class/--classes do not apply")
        return None
    chosen = None
    if klass is not None:
        chosen = [pipe.parse_class(klass)]
    elif classes is not None:
        chosen = [pipe.parse_class(c) for c in classes.split(",") if c.strip()]
    k = len(chosen) if chosen else pipe.num_classes
    total = n or 10 * k
    return pipe.default_labels(per_class=-(-total // k), classes=chosen)[:total]


def _sampler_options(sampler: str, flags: dict) -> dict:
    """The sampler flags given, refused where the sampler takes no such option."""
    from difforge.sampling import sampler_options, samplers_taking

    options = {}
    for flag, key in SAMPLER_FLAGS:
        if flags[key] is None:
            continue
        if key not in sampler_options(sampler):
            raise ValueError(f"{flag} applies to {', '.join(samplers_taking(key))}, not to {sampler}")
        options[key] = flags[key]
    return options


def _prompts(pipe, n: int | None, prompts: tuple[str, ...], prompts_file: str | None,
             negative_prompt: str | None) -> tuple[list[str] | None, int | None]:
    """A text model's prompt of every image (each prompt ceil(n / prompts) times, 10 by
    default, one grid row each) and the row length; (None, None) for other models."""
    from pathlib import Path

    given = list(prompts)
    if prompts_file:
        try:
            given += [line.strip() for line in Path(prompts_file).read_text(encoding="utf-8").splitlines()
                      if line.strip()]
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"--prompts-file {prompts_file}: cannot read it ({e})") from None
        if not given:
            raise ValueError(f"--prompts-file {prompts_file} holds no prompt")
    if not pipe.takes_text:
        if given or negative_prompt is not None:
            raise ValueError("--prompt, --prompts-file and --negative-prompt need a text-to-image model "
                             "(difforge train --text-encoder ...)")
        return None, None
    given = given or list(pipe.card.prompts or [""])
    per = -(-n // len(given)) if n else 10
    every = [p for p in given for _ in range(per)]
    return every[: n or len(every)], per


def _generate(pipe, n: int, labels, keep_frames: bool, no_progress: bool, *, sampler: str, steps, grid, **kw):
    """(images, labels, GIF frames by step), with a bar counting sampler steps over all batches."""
    from tqdm.auto import tqdm

    n_steps = len(pipe.sigmas(sampler, steps, grid)) - 1
    every = -(-n_steps // GIF_FRAMES)
    frames: dict[int, list] = {}
    batches = -(-n // 100)
    with tqdm(total=n_steps * batches, desc=f"sample ({sampler})", unit="step", dynamic_ncols=True,
              disable=no_progress) as bar:
        def on_step(d: dict) -> None:  # once per step (heun: per step, not per denoiser call)
            bar.update(1)
            # the last step's estimate is the result itself, added at the end
            if keep_frames and d["i"] % every == 0 and d["i"] < n_steps - 1:
                frames.setdefault(d["i"], []).append(pipe.to_images(d["denoised"]))

        images, labels = pipe.generate(n=n, labels=labels, sampler=sampler, steps=steps, grid=grid,
                                       callback=on_step, **kw)
    return images, labels, frames


def _write(pipe, images, labels, frames: dict, *, out: str, npz: str | None, png_dir: str | None,
           gif: str | None, per_row: int | None = None) -> None:
    path = pipe.save_grid(images, out, labels, per_row=per_row)
    click.echo(f"wrote {path} ({len(images)} images)")
    if npz:
        from difforge.io import save_npz

        click.echo(f"wrote {save_npz(npz, images, labels)}")
    if png_dir:
        from difforge.io import save_png_dir

        click.echo(f"wrote {len(images)} PNGs to {save_png_dir(png_dir, images)}")
    if gif:
        import torch

        gif_frames = [torch.cat(frames[i]) for i in sorted(frames)] + [images]
        click.echo(f"wrote {pipe.save_gif(gif_frames, gif, labels)} ({len(gif_frames)} frames)")


@cli.command()
@click.argument("run_dir", type=click.Path())
@click.option("--out", required=True, help="Directory to write the model to.")
@click.option("--format", "fmt", type=click.Choice(["difforge", "diffusers"]), default="difforge", show_default=True,
              help="difforge: model.safetensors + config.json (+ README.md for the Hub). diffusers: a DDPMPipeline "
              "folder (unet/, scheduler/, model_index.json) that diffusers' from_pretrained loads; needs a model "
              "trained with --model diffusers-unet (or imported from diffusers), and takes a model directory too.")
@click.option("--ema/--no-ema", default=True, show_default=True, help="Export the EMA weights.")
@click.option("--overwrite", is_flag=True, help="Replace an exported model already in --out.")
@click.option("--lora", type=click.Choice(["merged", "adapter"]), help="A LoRA run (train --lora-rank): merged, "
              "a plain model with the adapter folded into the weights; adapter, adapter.safetensors + config.json "
              "naming the base model and its hash (loads only beside that base). [default: merged]")
def export(run_dir, out, fmt, ema, overwrite, lora) -> None:
    """Export a run's newest checkpoint as a standalone model directory."""
    try:
        if lora is not None and fmt == "diffusers":
            raise ValueError("--lora chooses between difforge exports; --format diffusers always folds a LoRA "
                             "adapter into the weights")
        if fmt == "diffusers":
            from difforge.interop import export_diffusers

            path = export_diffusers(run_dir, out, ema=ema, overwrite=overwrite)
        else:
            from difforge.model_files import export_model

            path = export_model(run_dir, out, ema=ema, overwrite=overwrite, lora=lora)
    except (ValueError, FileNotFoundError, ImportError) as e:
        _fail(e)
    if lora == "adapter":
        click.echo(f"wrote {path / 'adapter.safetensors'} and {path / 'config.json'} (the base model's path and "
                   "hash) and README.md")
    elif fmt == "diffusers":
        click.echo(f"wrote {path} (diffusers DDPMPipeline: unet/, scheduler/, model_index.json; README.md)")
    else:
        click.echo(f"wrote {path / 'model.safetensors'} and {path / 'config.json'} (and README.md)")
