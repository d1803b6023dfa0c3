"""The `difforge` command: each sub-command parses, builds a config, makes one call."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from difforge import __version__

SAMPLER_NAMES = ("ddpm", "ddim")


class UserError(click.ClickException):
    """A one-line error for the user (exit status 2... click uses 1)."""


def _fail(e: Exception) -> None:
    raise UserError(str(e).splitlines()[0] if str(e) else type(e).__name__) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="difforge")
def cli() -> None:
    """difforge: train diffusion models on your own images and use them.

    \b
    Quick start:
      difforge train --out runs/demo --max-steps 3000   # Fashion-MNIST, class-conditional
      difforge sample runs/demo --out demo.png           # one row per class
      difforge export runs/demo --out models/demo        # model.safetensors + config.json
    """


# ---------------------------------------------------------------- train
@cli.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML config; CLI options override it.")
@click.option("--dataset", type=click.Choice(["fashion-mnist", "digits"]), help="Built-in dataset. [default: fashion-mnist]")
@click.option("--data", "data_path", type=click.Path(), help="Image folder (sub-folders = classes; flat = unconditional), or a folder of Fashion-MNIST idx files.")
@click.option("--out", help="Run directory. [default: runs/default]")
@click.option("--model", "preset", help="Model preset: unet (default), unet-seed (the article's), tiny, ...")
@click.option("--max-steps", type=int, help="Stop after this many optimiser steps (wins over --epochs).")
@click.option("--epochs", type=int, help="Passes over the training split. [default: 1 when --max-steps is absent]")
@click.option("--batch-size", type=int, help="Images per step. [default: 128]")
@click.option("--lr", type=float, help="Peak learning rate. [default: 2e-3]")
@click.option("--lr-schedule", type=click.Choice(["onecycle", "cosine", "constant"]), help="[default: onecycle]")
@click.option("--schedule", type=click.Choice(["linear", "cosine"]), help="Noise (beta) schedule. [default: linear]")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), help="fp16 needs CUDA. [default: fp32]")
@click.option("--conditional/--unconditional", default=None, help="Class-conditional when the data has labels. [default: conditional]")
@click.option("--image-size", type=int, help="Model input size. [default: native size rounded up to what the model needs]")
@click.option("--checkpoint-every", type=int, help="Steps between checkpoints (0: only at the end). [default: 1000]")
@click.option("--sample-every", type=int, help="Steps between sample grids (0: only at the end). [default: 500]")
@click.option("--ema-decay", type=float, help="[default: 0.995]")
@click.option("--ema-warmup", type=int, help="Steps during which the EMA is a plain copy. [default: 2000]")
@click.option("--seed", type=int, help="Seed for initialisation, data order and noise. [default: 0]")
@click.option("--device", help="auto, cpu, cuda or cuda:N. [default: auto]")
@click.option("--wandb", is_flag=True, default=None, help="Log to Weights & Biases (offline without WANDB_API_KEY).")
@click.option("--tensorboard", is_flag=True, default=None, help="Log to TensorBoard under RUN_DIR/tensorboard.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its newest valid checkpoint.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def train(config_file, dataset, data_path, out, preset, max_steps, epochs, batch_size, lr, lr_schedule,
          schedule, precision, conditional, image_size, checkpoint_every, sample_every, ema_decay,
          ema_warmup, seed, device, wandb, tensorboard, resume, no_progress) -> None:
    """Train a diffusion model (DDPM) and write a run directory.

    The run directory holds config.yaml, model.json, metrics.jsonl, samples/ and
    checkpoints/. With --resume the run's own config.yaml is used.
    """
    from difforge.config import ConfigError, RunConfig, config_from_dict, load_config

    overrides: dict = {"data": {}, "model": {}, "diffusion": {}, "train": {}}
    if dataset is not None:
        overrides["data"]["dataset"] = dataset
    if data_path is not None:
        if not Path(data_path).exists():
            _fail(FileNotFoundError(f"--data {data_path}: no such file or directory"))
        overrides["data"]["path"] = str(data_path)
        if dataset is None:
            overrides["data"]["dataset"] = "fashion-mnist" if _is_idx_folder(Path(data_path)) else "folder"
    put = {
        ("data", "image_size"): image_size, ("model", "preset"): preset, ("model", "conditional"): conditional,
        ("diffusion", "schedule"): schedule, ("train", "max_steps"): max_steps, ("train", "epochs"): epochs,
        ("train", "batch_size"): batch_size, ("train", "lr"): lr, ("train", "lr_schedule"): lr_schedule,
        ("train", "precision"): precision, ("train", "checkpoint_every"): checkpoint_every,
        ("train", "sample_every"): sample_every, ("train", "ema_decay"): ema_decay,
        ("train", "ema_warmup"): ema_warmup, ("train", "seed"): seed, ("train", "device"): device,
        ("train", "wandb"): wandb, ("train", "tensorboard"): tensorboard,
    }
    for (section, key), value in put.items():
        if value is not None:
            overrides[section][key] = value
    if out is not None:
        overrides["out"] = out
    try:
        base = load_config(config_file) if config_file else RunConfig()
        cfg = config_from_dict(overrides, base)
        from difforge.train.loop import train as run_training

        result = run_training(cfg, resume=resume, progress=not no_progress)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        _fail(e)
    if not result.stopped_early:
        click.echo(f"done: {result.step} steps; samples in {result.run_dir / 'samples'}, "
                   f"checkpoints in {result.run_dir / 'checkpoints'}")


def _is_idx_folder(path: Path) -> bool:
    return path.is_dir() and any(p.name.startswith("train-images-idx3-ubyte") for p in path.iterdir())


# ---------------------------------------------------------------- sample
@cli.command()
@click.argument("model_dir", type=click.Path())
@click.option("--out", default="samples.png", show_default=True, help="PNG grid to write.")
@click.option("--n", "n", type=int, help="Images in all. [default: 10 per class, or 64 unconditional]")
@click.option("--class", "klass", help="Sample only this class (index or name).")
@click.option("--classes", help="Comma-separated classes (indices or names), one grid row each.")
@click.option("--cfg", type=float, help="Classifier-free guidance scale (1: none). [default: 3]")
@click.option("--sampler", type=click.Choice(SAMPLER_NAMES), default="ddim", show_default=True)
@click.option("--steps", type=int, help="Denoiser calls. [default: 50 for ddim, 1000 for ddpm]")
@click.option("--seed", type=int, default=0, show_default=True, help="Image i uses seed + i.")
@click.option("--ema/--no-ema", default=True, show_default=True, help="Use the EMA weights of a run.")
@click.option("--npz", type=click.Path(dir_okay=False), help="Also write images (N,H,W,C uint8) and labels to this .npz.")
@click.option("--device", default="auto", show_default=True)
def sample(model_dir, out, n, klass, classes, cfg, sampler, steps, seed, ema, npz, device) -> None:
    """Generate images from a run directory or an exported model directory."""
    from difforge.pipeline import load_pipeline
    from difforge.train.loop import resolve_device

    try:
        pipe = load_pipeline(model_dir, ema=ema, device=resolve_device(device))
        labels = None
        if klass is not None and classes is not None:
            raise ValueError("give --class or --classes, not both")
        if pipe.num_classes:
            chosen = None
            if klass is not None:
                chosen = [pipe.parse_class(klass)]
            elif classes is not None:
                chosen = [pipe.parse_class(c) for c in classes.split(",") if c.strip()]
            k = len(chosen) if chosen else pipe.num_classes
            per = max(1, (n or 10 * k) // k)
            labels = pipe.default_labels(per_class=per, classes=chosen)
        elif klass is not None or classes is not None:
            raise ValueError("this model is unconditional: --class/--classes do not apply")
        from tqdm.auto import tqdm

        sigmas = pipe.sigmas(sampler, steps)
        total_n = len(labels) if labels is not None else (n or 64)
        batches = -(-total_n // 100)
        with tqdm(total=(len(sigmas) - 1) * batches, desc=f"sample ({sampler})", dynamic_ncols=True) as bar:
            images, labels = pipe.generate(n=total_n, labels=labels, cfg=cfg, sampler=sampler, steps=steps,
                                           seed=seed, callback=lambda d: bar.update(1))
    except (ValueError, FileNotFoundError) as e:
        _fail(e)
    path = pipe.save_grid(images, out, labels)
    click.echo(f"wrote {path} ({len(images)} images)")
    if npz:
        from difforge.io import save_npz

        click.echo(f"wrote {save_npz(npz, images, labels)}")


# ---------------------------------------------------------------- export
@cli.command()
@click.argument("run_dir", type=click.Path())
@click.option("--out", required=True, help="Directory to write model.safetensors and config.json to.")
@click.option("--ema/--no-ema", default=True, show_default=True, help="Export the EMA weights.")
def export(run_dir, out, ema) -> None:
    """Export a run's newest checkpoint as a standalone model directory."""
    from difforge.pipeline import export_model

    try:
        path = export_model(run_dir, out, ema=ema)
    except (ValueError, FileNotFoundError) as e:
        _fail(e)
    click.echo(f"wrote {path / 'model.safetensors'} and {path / 'config.json'}")


def main(argv: list[str] | None = None) -> None:
    """Entry point; `main([...])` runs a command in-process (tests) and raises SystemExit."""
    cli.main(args=argv, prog_name="difforge", standalone_mode=True)


if __name__ == "__main__":
    main(sys.argv[1:])
