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


class IndependentFrames:
    """Rows of unrelated frames for joint image-video training (Video Diffusion Models, Ho
    et al. 2022): a row for a clip of class c is T frames, each a random frame of a random
    training clip of class c (of any clip for unlabelled data), so the per-frame layers see
    T garments per row where a clip shows one or two. Drawn from the trainer's generator."""

    def __init__(self, labels: torch.Tensor | None, n: int, frames: int):
        if n < 1 or frames < 1:
            raise ValueError(f"need clips and frames, got {n} clips of {frames} frames")
        self.n, self.frames = n, frames
        self.pools: dict[int, torch.Tensor] = {}
        if labels is not None:
            for c in labels.unique().tolist():
                self.pools[int(c)] = torch.nonzero(labels == c).flatten()

    def draw(self, labels: torch.Tensor | None, rows: int, generator: torch.Generator
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """(clip, frame) indices, each (rows, T): row i's frames come from clips of class
        `labels[i]` (any clip without labels)."""
        u = torch.rand((rows, self.frames), generator=generator, dtype=torch.float64)
        frame = torch.randint(self.frames, (rows, self.frames), generator=generator)
        if labels is None or not self.pools:
            return (u * self.n).long().clamp_max(self.n - 1), frame
        clip = torch.empty((rows, self.frames), dtype=torch.long)
        for i, c in enumerate(labels.tolist()):
            pool = self.pools[int(c)]
            clip[i] = pool[(u[i] * len(pool)).long().clamp_max(len(pool) - 1)]
        return clip, frame

    @staticmethod
    def gather(clips: torch.Tensor, clip: torch.Tensor, frame: torch.Tensor) -> torch.Tensor:
        """Rows (rows, C, T, H, W) of frames `clips[clip[i, t], :, frame[i, t]]`."""
        picked = clips[clip.flatten(), :, frame.flatten()]  # (rows T, C, H, W)
        rows, t = clip.shape
        return picked.view(rows, t, *picked.shape[1:]).transpose(1, 2)
