"""`difforge train-prior`, `difforge unclip` (text -> prior -> decoder) and `difforge variations`."""

from __future__ import annotations

import click

from difforge.cli.common import DATASET_NAMES, SAMPLER_NAMES, _fail, cli, data_config, no_progress_option
from difforge.defaults import DEFAULT_CFG_IMAGE_EMBEDDING


@cli.command("train-prior")
@click.option("--clip", "clip_dir", required=True, type=click.Path(), help="The domain CLIP (a `difforge train-clip` "
              "folder) whose text and image embeddings the prior links; train the decoder on the same one.")
@click.option("--dataset", type=click.Choice(DATASET_NAMES), help="Built-in captioned dataset. "
              "[default: fashion-colour]")
@click.option("--data", "data_path", type=click.Path(), help="Captioned image folder (metadata.jsonl or .txt files).")
@click.option("--out", required=True, help="New folder for prior.json + prior.safetensors.")
@click.option("--steps", type=int, default=2000, show_default=True)
@click.option("--batch-size", type=int, default=256, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True, help="Peak learning rate (cosine decay).")
@click.option("--width", type=int, default=256, show_default=True, help="Width of the residual MLP.")
@click.option("--depth", type=int, default=4, show_default=True, help="Residual blocks.")
@click.option("--text-dropout", type=float, default=0.1, show_default=True, help="Share of rows trained on the null "
              "text (classifier-free guidance).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace a prior already in --out.")
def train_prior(clip_dir, dataset, data_path, out, steps, batch_size, lr, width, depth, text_dropout, seed, device,
                overwrite) -> None:
    """Train unCLIP's diffusion prior: a small diffusion model that draws a CLIP image
    embedding for a CLIP text embedding. `difforge unclip DECODER --prior OUT` then turns
    prompts into images through it."""
    from difforge.config import ConfigError, DataConfig

    try:
        from difforge.data import load_dataset
        from difforge.io.outputs import check_output_dir
        from difforge.models.clip import is_clip_dir
        from difforge.models.prior import is_prior_dir, save_prior
        from difforge.runtime import resolve_device
        from difforge.train.prior import PriorConfig
        from difforge.train.prior import train_prior as train_fn

        if not is_clip_dir(clip_dir):
            raise FileNotFoundError(f"--clip {clip_dir}: no CLIP model there (train one with `difforge train-clip`)")
        for name, value in (("--steps", steps), ("--batch-size", batch_size), ("--width", width), ("--depth", depth)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if not 0 <= text_dropout < 1:
            raise ValueError(f"--text-dropout must be in [0, 1), got {text_dropout}")
        target = check_output_dir(out, holds="prior", is_ours=is_prior_dir, overwrite=overwrite)
        data = data_config(dataset, data_path) or DataConfig(dataset="fashion-colour")
        cfg = PriorConfig(width=width, depth=depth, steps=steps, batch_size=batch_size, lr=lr,
                          text_dropout=text_dropout, seed=seed)
        card, net = train_fn(load_dataset(data), clip_dir, cfg, device=resolve_device(device), log=click.echo)
        path = save_prior(card, net, target)
    except (ConfigError, ValueError, FileNotFoundError, ImportError) as e:
        _fail(e)
    click.echo(f"prior of {card.dim}-d CLIP embeddings, {steps} steps in {card.training['seconds']:g} s; wrote {path}")


def _decoder_options(f):
    for option in reversed([
        click.option("--cfg", type=float, help=f"The decoder's guidance scale (from the null embedding). "
                     f"[default: {DEFAULT_CFG_IMAGE_EMBEDDING:g}]"),
        click.option("--sampler", type=click.Choice(SAMPLER_NAMES), default="ddim", show_default=True),
        click.option("--steps", type=int, help="The decoder's sampler steps. [default: as for `sample`]"),
        click.option("--seed", type=int, default=0, show_default=True, help="Image i uses seed + i."),
        click.option("--ema/--no-ema", default=True, show_default=True, help="Use the EMA weights of a run."),
        click.option("--device", default="auto", show_default=True),
    ]):
        f = option(f)
    return no_progress_option(f)


def _load(model_dir, ema, device):
    from difforge.pipeline import load_pipeline
    from difforge.runtime import resolve_device

    pipe = load_pipeline(model_dir, ema=ema, device=resolve_device(device))
    if not pipe.takes_image_embeddings:
        raise ValueError(f"{model_dir} is not an unCLIP decoder (train one with `difforge train --clip CLIP_DIR`)")
    return pipe


@cli.command("unclip")
@click.argument("model_dir", type=click.Path())
@click.option("--prior", "prior_dir", required=True, type=click.Path(), help="A `difforge train-prior` folder "
              "trained on the decoder's CLIP.")
@click.option("--prompt", "prompts", multiple=True, help="A prompt (repeat for several, one grid row each). "
              "[default: the decoder's example prompts]")
@click.option("--n", "n", type=int, default=8, show_default=True, help="Images per prompt.")
@click.option("--prior-cfg", type=float, default=3.0, show_default=True, help="The prior's guidance scale (from "
              "the null text).")
@click.option("--prior-steps", type=int, default=25, show_default=True, help="The prior's DDIM steps.")
@click.option("--out", default="unclip.png", show_default=True, help="PNG grid to write (one row per prompt).")
@_decoder_options
def unclip(model_dir, prior_dir, prompts, n, prior_cfg, prior_steps, out, cfg, sampler, steps, seed, ema, device,
           no_progress) -> None:
    """Text -> image through unCLIP: the decoder's CLIP embeds each prompt, the prior draws
    a CLIP image embedding for it, and the decoder (MODEL_DIR, trained with `difforge train
    --clip`) draws an image of that embedding."""
    from difforge.config import ConfigError

    try:
        from difforge.models.prior import load_prior
        from difforge.tasks.unclip import text_to_image

        if n < 1 or prior_steps < 1:
            raise ValueError(f"--n and --prior-steps must be >= 1, got {n}, {prior_steps}")
        pipe = _load(model_dir, ema, device)
        card, prior = load_prior(prior_dir, pipe.device)
        given = list(prompts) or list(pipe.card.prompts or ())
        if not given:
            raise ValueError("give --prompt (this decoder records no example prompts)")
        rows = [p for p in given for _ in range(n)]
        images, _ = text_to_image(pipe, card, prior, rows, prior_cfg=prior_cfg, prior_steps=prior_steps, seed=seed,
                                  cfg=cfg, sampler=sampler, steps=steps)
        path = pipe.save_grid(images, out, None, per_row=n)
    except (ConfigError, ValueError, FileNotFoundError, ImportError) as e:
        _fail(e)
    click.echo(f"wrote {path} ({len(images)} images, {n} per prompt)")


@cli.command("variations")
@click.argument("model_dir", type=click.Path())
@click.option("--image", "image_paths", multiple=True, required=True, type=click.Path(), help="A picture (or a "
              "folder of them) at the model's size; repeatable.")
@click.option("--n", "n", type=int, default=8, show_default=True, help="Variations per image.")
@click.option("--out", default="variations.png", show_default=True, help="PNG grid: each row an image, then its "
              "variations.")
@click.option("--png-dir", type=click.Path(file_okay=False), help="Also write each variation as a PNG.")
@_decoder_options
def variations(model_dir, image_paths, n, out, png_dir, cfg, sampler, steps, seed, ema, device, no_progress) -> None:
    """Variations of your images through an unCLIP decoder: each image's CLIP image
    embedding, decoded n times with different noise. What the embedding captures stays;
    the rest varies."""
    from difforge.config import ConfigError

    try:
        import torch

        from difforge.io.read import read_images
        from difforge.tasks.unclip import variations as make_variations

        if n < 1:
            raise ValueError(f"--n must be >= 1, got {n}")
        pipe = _load(model_dir, ema, device)
        size = pipe.card.native_size
        originals = []
        for p in image_paths:
            x = read_images(p, pipe.card.pixel_channels)
            if tuple(x.shape[-2:]) != (size, size):
                raise ValueError(f"{p} is {x.shape[-1]}x{x.shape[-2]}; this model works at {size}x{size}")
            originals.append(x)
        originals = torch.cat(originals)
        images = make_variations(pipe, originals, n, seed=seed, cfg=cfg, sampler=sampler, steps=steps)
        rows = torch.cat([torch.cat([originals[i : i + 1], images[i * n : (i + 1) * n]])
                          for i in range(len(originals))])
        path = pipe.save_grid(rows, out, None, per_row=n + 1)
        if png_dir:
            from difforge.io import save_png_dir

            save_png_dir(png_dir, images)
    except (ConfigError, ValueError, FileNotFoundError, ImportError) as e:
        _fail(e)
    click.echo(f"wrote {path} ({len(originals)} image(s), {n} variations each)"
               + (f" and {len(images)} PNGs to {png_dir}" if png_dir else ""))
