"""`difforge train`."""

from __future__ import annotations

import sys

import click

from difforge.cli.common import DATASET_NAMES, FRAMEWORK_NAMES, _fail, cli, data_kind


@cli.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML config; CLI options override it.")
@click.option("--dataset", type=click.Choice(DATASET_NAMES), help="Built-in dataset. [default: fashion-mnist]")
@click.option("--data", "data_path", type=click.Path(), help="Image folder (sub-folders = classes; flat = unconditional), a folder of Fashion-MNIST idx files, or a `difforge prepare` store.")
@click.option("--out", help="Run directory. [default: runs/default]")
@click.option("--model", "preset", help="Model preset: unet (default), unet-seed (the article's), tiny, ...")
@click.option("--max-steps", type=int, help="Stop after this many optimiser steps (wins over --epochs).")
@click.option("--epochs", type=int, help="Passes over the training split. [default: 1 when --max-steps is absent]")
@click.option("--batch-size", type=int, help="Images per step. [default: 128]")
@click.option("--lr", type=float, help="Peak learning rate. [default: 2e-3]")
@click.option("--lr-schedule", type=click.Choice(["onecycle", "cosine", "constant"]), help="[default: onecycle]")
@click.option("--schedule", type=click.Choice(["linear", "cosine"]), help="Noise (beta) schedule. [default: linear]")
@click.option("--framework", type=click.Choice(FRAMEWORK_NAMES), help="ddpm (Ho et al. 2020), ncsn (Song & Ermon "
              "2019), vp-sde / subvp-sde / ve-sde (Song et al. 2021), edm (Karras et al. 2022); docs/frameworks.md. "
              "[default: ddpm]")
@click.option("--prediction", type=click.Choice(["eps", "x0", "v"]), help="Network target for ddpm, vp-sde and "
              "subvp-sde. [default: eps]")
@click.option("--min-snr-gamma", type=float, help="Min-SNR-gamma loss weighting (Hang et al. 2023), e.g. 5; ddpm, "
              "vp-sde and subvp-sde. [default: off]")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), help="fp16 needs CUDA. [default: fp32]")
@click.option("--conditional/--unconditional", default=None, help="Class-conditional when the data has labels. [default: conditional]")
@click.option("--task", type=click.Choice(["generate", "superres"]), help="superres: an SR3 model conditioned on the "
              "image downsampled by --scale (use it with `difforge upscale`). [default: generate]")
@click.option("--scale", type=int, help="Upscaling factor for --task superres, e.g. 2 or 4. [default: 2]")
@click.option("--image-size", type=int, help="Model input size. [default: native size rounded up to what the model needs]")
@click.option("--checkpoint-every", type=int, help="Steps between checkpoints (0: only at the end). [default: 1000]")
@click.option("--sample-every", type=int, help="Steps between sample grids (0: only at the end). [default: 500]")
@click.option("--ema-decay", type=float, help="[default: 0.995]")
@click.option("--ema-warmup", type=int, help="Steps during which the EMA is a plain copy. [default: 2000]")
@click.option("--seed", type=int, help="Seed for initialisation, data order and noise. [default: 0]")
@click.option("--device", help="auto, cpu, cuda or cuda:N. [default: auto]")
@click.option("--wandb", is_flag=True, default=None, help="Log to Weights & Biases (offline without WANDB_API_KEY).")
@click.option("--tensorboard", is_flag=True, default=None, help="Log to TensorBoard under RUN_DIR/tensorboard.")
@click.option("--eval-every", type=int, help="Steps between FD/KID evaluations of the EMA weights (domain classifier "
              "features), logged to metrics.jsonl, W&B and TensorBoard; 0: off. [default: 0]")
@click.option("--eval-samples", type=int, help="Images generated per in-training evaluation. [default: 500]")
@click.option("--final-grid/--no-final-grid", default=None, help="Draw samples/final.png (10 per class, EMA weights) "
              "at the end. [default: on]")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its newest valid checkpoint; with "
              "--max-steps or --epochs, extend (or shorten) it.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def train(config_file, dataset, data_path, out, preset, max_steps, epochs, batch_size, lr, lr_schedule,
          schedule, framework, prediction, min_snr_gamma, precision, conditional, task, scale, image_size, checkpoint_every, sample_every, ema_decay,
          ema_warmup, seed, device, wandb, tensorboard, eval_every, eval_samples, final_grid, resume, no_progress) -> None:
    """Train a diffusion model (DDPM, or --framework ncsn, vp-sde, subvp-sde, ve-sde, edm) and
    write a run directory.

    The run directory holds config.yaml, model.json, metrics.jsonl, samples/ and
    checkpoints/. With --resume the run's own config.yaml is used.
    """
    from difforge.config import ConfigError, RunConfig, config_from_dict, load_config
    from difforge.runs import CheckpointError
    from difforge.train.loop import TrainingError

    overrides: dict = {"data": {}, "model": {}, "diffusion": {}, "train": {}}
    if dataset is not None:
        overrides["data"]["dataset"] = dataset
    if data_path is not None:
        try:
            overrides["data"]["dataset"] = data_kind(dataset, data_path)
        except (FileNotFoundError, ValueError) as e:
            _fail(e)
        overrides["data"]["path"] = str(data_path)
    put = {
        ("data", "image_size"): image_size, ("model", "preset"): preset, ("model", "conditional"): conditional,
        ("model", "task"): task, ("model", "scale"): scale,
        ("diffusion", "schedule"): schedule, ("diffusion", "framework"): framework,
        ("diffusion", "prediction"): prediction, ("diffusion", "min_snr_gamma"): min_snr_gamma, ("train", "max_steps"): max_steps, ("train", "epochs"): epochs,
        ("train", "batch_size"): batch_size, ("train", "lr"): lr, ("train", "lr_schedule"): lr_schedule,
        ("train", "precision"): precision, ("train", "checkpoint_every"): checkpoint_every,
        ("train", "sample_every"): sample_every, ("train", "ema_decay"): ema_decay,
        ("train", "ema_warmup"): ema_warmup, ("train", "seed"): seed, ("train", "device"): device,
        ("train", "wandb"): wandb, ("train", "tensorboard"): tensorboard,
        ("train", "eval_every"): eval_every, ("train", "eval_samples"): eval_samples,
        ("train", "final_grid"): final_grid,
    }
    for (section, key), value in put.items():
        if value is not None:
            overrides[section][key] = value
    if out is not None:
        overrides["out"] = out
    length = {k: overrides["train"].pop(k) for k in ("max_steps", "epochs") if resume and k in overrides["train"]}
    ignored = [k for section in ("data", "model", "diffusion", "train") for k in overrides[section]]
    if resume and (ignored or config_file):
        click.echo(f"note: --resume continues with the run's own config.yaml; ignoring "
                   f"{', '.join(ignored + (['--config'] if config_file else []))}", err=True)
    try:
        base = load_config(config_file) if config_file else RunConfig()
        cfg = config_from_dict(overrides, base)
        from difforge.train.loop import train as run_training

        result = run_training(cfg, resume=resume, progress=not no_progress, length=length or None)
    except (ConfigError, FileNotFoundError, ValueError, CheckpointError, TrainingError) as e:
        _fail(e)
    if result.signum is not None:  # stopped by Ctrl-C / SIGTERM: not a finished run (128 + N, as shells report it)
        sys.exit(128 + result.signum)
    if not result.stopped_early and result.rank == 0:
        click.echo(f"done: {result.step} steps; samples in {result.run_dir / 'samples'}, "
                   f"checkpoints in {result.run_dir / 'checkpoints'}")
