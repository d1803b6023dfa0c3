"""A Fashion-MNIST-layout stand-in shared by the text and unCLIP tests: 200 bright squares of
noise per split, labels cycling through the ten classes."""

from pathlib import Path

import numpy as np

from difforge.data.idx import write_idx


def write_garment_squares(folder: Path, n: int = 200, seed: int = 0) -> Path:
    """Gzipped IDX files (train and t10k) in `folder`: an 18x18 square of random bright pixels
    in each 28x28 image."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "t10k"):
        images = np.zeros((n, 28, 28), np.uint8)
        images[:, 5:23, 5:23] = rng.integers(80, 256, (n, 18, 18), dtype=np.uint8)
        write_idx(folder / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{split}-labels-idx1-ubyte.gz", (np.arange(n) % 10).astype(np.uint8))
    return folder
