"""Shared pieces of the video tests: a small stand-in Fashion-MNIST folder."""

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
