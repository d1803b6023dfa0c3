"""Shared pieces of the video tests: a small stand-in Fashion-MNIST folder, and a tiny video run
trained on it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from difforge.data import write_idx


def tiny_fashion(folder: Path, n_train: int = 48, n_test: int = 16, seed: int = 0) -> Path:
    """A Fashion-MNIST-layout folder of random garments (raw IDX files): blobs of
    bright pixels on black, every class present."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for stem, n in (("train", n_train), ("t10k", n_test)):
        images = np.zeros((n, 28, 28), dtype=np.uint8)
        for i in range(n):
            r, c = rng.integers(4, 12, size=2)
            images[i, r : r + 14, c : c + 12] = rng.integers(120, 256, size=(14, 12))
        write_idx(folder / f"{stem}-images-idx3-ubyte", images)
        write_idx(folder / f"{stem}-labels-idx1-ubyte", (np.arange(n) % 10).astype(np.uint8))
    return folder


def train_tiny_video(tmp: Path, model: str = "stunet-tiny", *, steps: int = 3, batch: int = 4, sample_every: int = 2,
                     timesteps: int = 50, n_train: int = 24, n_test: int = 8) -> tuple[Path, Path]:
    """(run folder, data folder): `model` trained `steps` steps on moving clips of a
    `tiny_fashion` folder, through the CLI, without a final grid."""
    from cli_runner import run

    root = tiny_fashion(tmp / "fm", n_train=n_train, n_test=n_test)
    out = tmp / "run"
    code = run(["train", "--dataset", "moving-fashion-mnist", "--data", str(root), "--model", model,
                "--out", str(out), "--max-steps", str(steps), "--batch-size", str(batch), "--set",
                f"train.sample_every={sample_every}", "--set", "train.final_grid=false", "--set",
                f"diffusion.timesteps={timesteps}", "--no-progress"])
    assert code == 0
    return out, root
