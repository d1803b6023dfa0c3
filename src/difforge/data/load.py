"""`load_dataset`: a data config -> the train / val / test splits in memory, from the
built-in sets, an image folder, idx files or a prepared store."""

from __future__ import annotations

from difforge.config import DATASETS, DataConfig
from difforge.data.dataset import DatasetBundle, _with_channels, split_validation
from difforge.data.digits import load_digits
from difforge.data.fashion_colour import load_fashion_colour
from difforge.data.folder import load_image_folder
from difforge.data.idx import load_fashion_mnist
from difforge.data.moving import load_moving_fashion_mnist
from difforge.data.shards import load_shards
from difforge.data.store import load_store


def load_dataset(cfg: DataConfig) -> DatasetBundle:
    """Load the configured data into memory and split off validation (`cfg.val_fraction`).

    fashion-mnist: train/val from the 60k train part, test = the 10k t10k part;
      `cfg.path` overrides the folder.
    fashion-colour: the captioned colour set drawn from Fashion-MNIST (`data/fashion_colour.py`,
      seed 0): train/val from the 60k train part (no held-out garment x colour pair),
      test from the t10k part; `cfg.path` overrides the Fashion-MNIST folder.
    moving-fashion-mnist: clips (N, 1, 16, 32, 32) of garments moving in a frame
      (`data/moving.py`, seed 0): train/val from 6000 clips of the 60k train part, test
      from 1000 clips of the t10k part; `cfg.path` overrides the Fashion-MNIST folder.
    digits: train/val from all 1797 images; test None (too few to spare; val is held out).
    folder: train/val from the images under `cfg.path`; test None; `cfg.image_size`,
      when given, is the load size, else see `load_image_folder`.
    shards: train/val from the samples of the tar shards `cfg.path` names (a folder of
      `*.tar`, one `.tar` or a brace pattern; `data/shards.py`); test None; sized as a folder.
    prepared: the splits of the `difforge prepare` store at `cfg.path`, memory-mapped:
      train, val and test as stored (`cfg.val_fraction` and `split_seed` do not apply).
    `cfg.channels` = 3 on a grayscale set repeats the channel. Labels, captions and
    attributes are always kept.
    """
    skipped: list[tuple[str, str]] = []
    test = None
    if cfg.dataset == "prepared":
        return _load_prepared(cfg)
    if cfg.dataset == "fashion-mnist":
        full, test = load_fashion_mnist(cfg.path)
    elif cfg.dataset == "fashion-colour":
        full, test = load_fashion_colour(cfg.path)
    elif cfg.dataset == "moving-fashion-mnist":
        full, test = load_moving_fashion_mnist(cfg.path)
    elif cfg.dataset == "digits":
        full = load_digits()
    elif cfg.dataset == "folder":
        if cfg.path is None:
            raise ValueError("dataset 'folder' needs a path (--data PATH)")
        full, skipped = load_image_folder(cfg.path, channels=cfg.channels, size=cfg.image_size)
    elif cfg.dataset == "shards":
        if cfg.path is None:
            raise ValueError("dataset 'shards' needs a path (--data SHARDS)")
        full, skipped = load_shards(cfg.path, channels=cfg.channels, size=cfg.image_size)
    else:
        raise ValueError(f"unknown dataset {cfg.dataset!r}; expected one of {sorted(DATASETS)}")
    full = _with_channels(full, cfg.channels)
    test = None if test is None else _with_channels(test, cfg.channels)
    if cfg.val_fraction > 0:
        train, val = split_validation(full, cfg.val_fraction, cfg.split_seed)
    else:
        train, val = full, None
    return _bundle(train, val, test, skipped)


def _load_prepared(cfg: DataConfig) -> DatasetBundle:
    """A `difforge prepare` store: its own train / val / test splits, memory-mapped."""
    if cfg.path is None:
        raise ValueError("dataset 'prepared' needs a path (--data STORE_DIR)")
    manifest, splits = load_store(cfg.path)
    train = splits.get("train")
    if train is None:
        raise ValueError(f"prepared store {cfg.path} has no training images")
    val, test = splits.get("val"), splits.get("test")
    train = _with_channels(train, cfg.channels)
    val = None if val is None else _with_channels(val, cfg.channels)
    test = None if test is None else _with_channels(test, cfg.channels)
    return _bundle(train, val, test)


def _bundle(train, val, test, skipped: list | None = None) -> DatasetBundle:
    """The splits, with the size, channels and class names of the training split."""
    return DatasetBundle(train=train, val=val, test=test, native_size=train.size, channels=train.channels,
                         class_names=train.class_names, skipped=skipped or [])
