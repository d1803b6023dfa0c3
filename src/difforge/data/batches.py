"""Which images make up each training batch: a pure function of (seed, step).

Batch `step` is slice `step % steps_per_epoch` of epoch `step // steps_per_epoch`'s
permutation, so resuming at any step reads exactly the batches an unbroken run would.
"""

from __future__ import annotations

import torch


class EpochBatches:
    """Shuffled, drop-last batches of indices 0..n-1, reshuffled every epoch."""

    def __init__(self, n: int, batch_size: int, seed: int = 0):
        if batch_size > n:
            raise ValueError(f"batch size {batch_size} is larger than the dataset ({n} images)")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.steps_per_epoch = n // batch_size
        self._cached: tuple[int, torch.Tensor] | None = None

    def permutation(self, epoch: int) -> torch.Tensor:
        if self._cached is None or self._cached[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._cached = (epoch, torch.randperm(self.n, generator=g))
        return self._cached[1]

    def batch(self, step: int) -> torch.Tensor:
        epoch, pos = divmod(step, self.steps_per_epoch)
        return self.permutation(epoch)[pos * self.batch_size : (pos + 1) * self.batch_size]
