"""What every command module shares: the click group, the one-line user error, the names
the option choices offer, and the --data helpers of `train`, `train-classifier` and
`evaluate`. Light on purpose: `difforge --help` imports this and must not import torch."""

from __future__ import annotations

import math
from pathlib import Path
from typing import NoReturn

import click

from difforge import __version__
from difforge.allocator import tune_malloc

# Copies of difforge.sampling.SAMPLERS and difforge.diffusion.grids.GRIDS, so that
# `difforge --help` does not import torch; tests/cli checks that they agree.
SAMPLER_NAMES = ("ddpm", "ddim", "euler", "euler-a", "heun", "dpmpp-2m", "dpmpp-2m-sde", "dpmpp-3m",
                 "langevin", "reverse-sde", "pc")
FRAMEWORK_NAMES = ("ddpm", "ncsn", "vp-sde", "subvp-sde", "ve-sde", "edm")  # difforge.diffusion.frameworks
GRID_NAMES = ("leading", "trailing", "linspace", "karras", "log-snr")
DATASET_NAMES = ("fashion-mnist", "fashion-colour", "digits")  # the built-in datasets --dataset offers
TRAIN_DATASET_NAMES = DATASET_NAMES + ("moving-fashion-mnist",)  # ... and train's, clips too
FROM_FASHION_MNIST = ("fashion-colour", "moving-fashion-mnist")  # built from a Fashion-MNIST idx folder (--data)
GIF_FRAMES = 16  # at most this many frames of the denoising, plus the final images
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")  # what a grid or picture --out may end in

no_progress_option = click.option("--no-progress", is_flag=True, help="No progress bar.")


class UserError(click.ClickException):
    """A one-line error for the user (exit status 2... click uses 1)."""


def _fail(e: Exception) -> NoReturn:
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
    tune_malloc()


def _is_idx_folder(path: Path) -> bool:
    return path.is_dir() and any(p.name.startswith("train-images-idx3-ubyte") for p in path.iterdir())


def _guess_dataset(path: Path) -> str:
    """The dataset kind of a --data path: a prepared store, an idx folder, tar shards (a
    folder of them, one, or a brace pattern), or an image folder."""
    from difforge.data.shards import is_shard_spec
    from difforge.data.store import is_store

    if is_store(path):
        return "prepared"
    return "fashion-mnist" if _is_idx_folder(path) else "shards" if is_shard_spec(path) else "folder"


def data_kind(dataset: str | None, data_path: str) -> str:
    """The dataset kind for --data PATH (with --dataset, only when the two agree)."""
    path = Path(data_path)
    if not path.exists() and "{" not in data_path:  # a brace pattern names shards
        raise FileNotFoundError(f"--data {data_path}: no such file or directory")
    kind = _guess_dataset(path)
    if dataset in FROM_FASHION_MNIST and kind == "fashion-mnist":
        return dataset
    if dataset is not None and dataset != kind:
        what = {"prepared": "a prepared store", "fashion-mnist": "a folder of Fashion-MNIST idx files",
                "folder": "an image folder", "shards": "tar shards"}[kind]
        raise ValueError(f"--dataset {dataset} and --data {data_path} ({what}) disagree: give one of them")
    return kind


def data_config(dataset: str | None, data_path: str | None):
    """A DataConfig from --dataset / --data, or None when neither is given."""
    from difforge.config import DataConfig

    if data_path is not None:
        return DataConfig(dataset=data_kind(dataset, data_path), path=str(data_path))
    return DataConfig(dataset=dataset) if dataset is not None else None


def parse_interval(text: str | None) -> tuple[float, float] | None:
    """--cfg-interval "LO,HI" -> (lo, hi), "all" -> (0, inf); a one-line error for anything else."""
    if text is None:
        return None
    if text.strip().lower() == "all":
        return 0.0, math.inf
    parts = text.split(",")
    try:
        lo, hi = (float(p) for p in parts)
    except ValueError:
        raise ValueError(f"--cfg-interval takes LO,HI (two noise levels, e.g. 0.3,5) or all, got {text!r}") from None
    if not 0 <= lo <= hi:
        raise ValueError(f"--cfg-interval needs 0 <= LO <= HI, got {text!r}")
    return lo, hi
