"""scikit-learn's 8x8 handwritten digits (1797 images, 10 classes): a tiny set for tests."""

from __future__ import annotations

import numpy as np
import torch

from difforge.data.dataset import ImageDataset

DIGITS_CLASSES = [str(d) for d in range(10)]


def load_digits() -> ImageDataset:
    """The UCI optical digits bundled with scikit-learn, as uint8 (1797, 1, 8, 8).

    Pixel values 0..16 are scaled to 0..255 by round(v * 255 / 16), halves rounded up
    (only v = 8 -> 127.5 -> 128 is a half). Needs scikit-learn (no download).
    """
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError:
        raise ValueError("the 'digits' dataset needs scikit-learn: pip install 'difforge[digits]'") from None
    bunch = sk_load_digits()
    values = np.asarray(bunch.images, dtype=np.float64)  # (N, 8, 8) in 0..16
    if values.min() < 0 or values.max() > 16:
        raise ValueError(f"digits values outside 0..16: {values.min()}..{values.max()}")
    images = np.floor(values * 255 / 16 + 0.5).astype(np.uint8)
    return ImageDataset(
        images=torch.from_numpy(images).unsqueeze(1),  # (N, 1, 8, 8)
        labels=torch.from_numpy(np.asarray(bunch.target, dtype=np.int64)),
        class_names=list(DIGITS_CLASSES),
        name="digits",
    )
