"""Memorization audit: does the model copy its training images?

For each generated image, the distance to its nearest training image; the same statistic
for held-out real images (never trained on) is the baseline, i.e. how close a *new* image
from the data distribution typically comes to the training set.

Distances (both reported):
- pixel space: root-mean-square difference of the pixels scaled to [0, 1], i.e.
  ||a - b||_2 / sqrt(C * H * W) (0: identical; 1/255: one level everywhere);
- classifier feature space (when the data has a domain classifier): Euclidean distance
  between its penultimate features (`eval.classifier`), which ignores small shifts.

Near-copies. A generated image is a near-copy when its nearest-training distance is below
the `quantile` (default 1%) of the held-out images' nearest-training distances: by
construction `quantile` of fresh real images fall below that threshold, so a model that
generalizes shows about `quantile` near-copies, and a memorizing one many more. The report
gives the fraction and its ratio to the baseline's, plus the medians of both distributions.
(Fashion-MNIST has real near-duplicates across its splits; the baseline absorbs them.)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

NEAR_COPY_QUANTILE = 0.01


def nearest_distances(queries: np.ndarray, keys: np.ndarray, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean distance from each query row to its nearest key row, and that key's index.
    Exact (no approximation); float64 accumulation of |q|^2 - 2 q.k + |k|^2, in chunks."""
    q = np.asarray(queries, dtype=np.float32)
    k = np.asarray(keys, dtype=np.float32)
    if q.ndim != 2 or k.ndim != 2 or q.shape[1] != k.shape[1]:
        raise ValueError(f"need 2-D arrays with the same width, got {q.shape} and {k.shape}")
    if len(k) == 0:
        raise ValueError("no training images to compare with")
    kk = (k.astype(np.float64) ** 2).sum(1)
    dist, idx = np.empty(len(q)), np.empty(len(q), dtype=np.int64)
    for s in range(0, len(q), chunk):
        qs = q[s : s + chunk]
        d2 = (qs.astype(np.float64) ** 2).sum(1)[:, None] - 2.0 * (qs @ k.T).astype(np.float64) + kk[None]
        j = d2.argmin(1)
        idx[s : s + chunk] = j
        # recompute the winner exactly (the expansion loses precision for near-identical pairs)
        diff = qs.astype(np.float64) - k[j].astype(np.float64)
        dist[s : s + chunk] = np.sqrt((diff**2).sum(1))
    return dist, idx


def pixels(images: torch.Tensor) -> np.ndarray:
    """uint8 (N, C, H, W) -> (N, C*H*W) float32 in [0, 1], scaled by 1/sqrt(dims) so that
    Euclidean distances are per-pixel RMS differences."""
    x = images.reshape(len(images), -1).float().numpy() / 255.0
    return x / np.sqrt(x.shape[1])


@dataclass
class SpaceAudit:
    """Nearest-training-neighbour statistics in one space."""

    generated: np.ndarray  # (N,) distance of each generated image to its nearest training image
    generated_index: np.ndarray  # (N,) that training image
    heldout: np.ndarray  # (M,) the same for held-out real images
    heldout_index: np.ndarray
    quantile: float

    @property
    def threshold(self) -> float:
        return float(np.quantile(self.heldout, self.quantile))

    def summary(self) -> dict:
        t = self.threshold
        frac = float((self.generated < t).mean())
        base = float((self.heldout < t).mean())
        return {"n_generated": len(self.generated), "n_heldout": len(self.heldout),
                "median_generated": float(np.median(self.generated)), "median_heldout": float(np.median(self.heldout)),
                "min_generated": float(self.generated.min()), "min_heldout": float(self.heldout.min()),
                "median_ratio": float(np.median(self.generated) / max(np.median(self.heldout), 1e-12)),
                "threshold": t, "quantile": self.quantile, "near_copy_fraction": frac,
                "heldout_fraction": base, "near_copy_ratio": frac / base if base > 0 else None}


def audit_space(generated: np.ndarray, train: np.ndarray, heldout: np.ndarray,
                quantile: float = NEAR_COPY_QUANTILE) -> SpaceAudit:
    """Nearest-training distances of generated and held-out vectors (rows) in one space."""
    if not 0 < quantile < 1:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}")
    d_gen, i_gen = nearest_distances(generated, train)
    d_held, i_held = nearest_distances(heldout, train)
    return SpaceAudit(d_gen, i_gen, d_held, i_held, quantile)


def closest_pairs_png(generated: torch.Tensor, train: torch.Tensor, audit: SpaceAudit, path: str | Path,
                      count: int = 16, per_row: int = 4) -> Path:
    """The `count` generated images closest to the training set, each next to its nearest
    training image: rows of (generated, training) pairs, closest first, a blank tile
    between pairs."""
    from difforge.io import save_grid

    order = np.argsort(audit.generated)[:count]
    per_row = min(per_row, len(order))
    blank = torch.full_like(generated[0], 255)
    tiles = []
    for k, i in enumerate(order):
        if k % per_row:
            tiles.append(blank)
        tiles += [generated[int(i)], train[int(audit.generated_index[i])]]
    while len(tiles) % (3 * per_row - 1):  # pad the last row
        tiles.append(blank)
    grid = torch.stack(tiles)
    scale = min(4, max(1, 64 // grid.shape[-1]))
    return save_grid(grid, path, nrow=3 * per_row - 1, scale=scale)


def memorization_audit(
    generated: torch.Tensor,
    train: torch.Tensor,
    heldout: torch.Tensor,
    *,
    features=None,
    out: str | Path | None = None,
    quantile: float = NEAR_COPY_QUANTILE,
) -> dict:
    """Audit uint8 images (N, C, H, W): `generated` against `train`, with `heldout` real
    images as the baseline. `features`: optional images -> (N, D) array (the classifier's
    penultimate layer) for a second space. With `out`, writes memorization.png (closest
    generated/training pairs in pixel space). Returns {space: summary} (see SpaceAudit)."""
    for name, x in (("generated", generated), ("train", train), ("held-out", heldout)):
        if x.dtype != torch.uint8 or x.ndim != 4 or len(x) == 0:
            raise ValueError(f"{name} images must be a non-empty uint8 (N, C, H, W) batch, "
                             f"got {x.dtype} {tuple(x.shape)}")
    if generated.shape[1:] != train.shape[1:] or heldout.shape[1:] != train.shape[1:]:
        raise ValueError(f"image shapes differ: generated {tuple(generated.shape[1:])}, train "
                         f"{tuple(train.shape[1:])}, held-out {tuple(heldout.shape[1:])}")
    result = {}
    pix = audit_space(pixels(generated), pixels(train), pixels(heldout), quantile)
    result["pixel"] = {**pix.summary(), "distance": "RMS pixel difference, pixels in [0, 1]"}
    if features is not None:
        feat = audit_space(features(generated), features(train), features(heldout), quantile)
        result["classifier"] = {**feat.summary(), "distance": "Euclidean, domain-classifier features"}
    if out is not None:
        path = closest_pairs_png(generated, train, pix, Path(out) / "memorization.png")
        result["pairs_png"] = path.name
    return result
