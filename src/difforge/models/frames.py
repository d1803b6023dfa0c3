"""Observed frames of a clip: the conditioning value of a video model (`FrameCond`).

Flexible Diffusion Models (Harvey et al. 2022) train one network to generate any frames of
a clip given any others: each training clip is split into observed frames, given to the
network clean, and latent ones, which it denoises. Here the observed frames and their mask
travel as a `FrameCond` beside the clip's class label; the network reads the frames (zero
where unobserved) and the mask as extra input channels. `FrameCond` is a structured cond
batch (`len`, rows by slice or integer / boolean tensor, `to`, a static `cat`), so
samplers pass it through and classifier-free guidance batches it with its null.

Joint image-video training (Ho et al. 2022) marks rows whose T frames are independent
images rather than a clip (`independent`): the network's temporal layers leave those rows
unchanged, so they train the per-frame (spatial) layers only, at T garments per row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


def _rows(index, n: int):
    if isinstance(index, int):
        if not -n <= index < n:
            raise IndexError(f"row {index} out of range for a batch of {n}")
        return slice(index % n, index % n + 1)
    return index


@dataclass(frozen=True, eq=False)
class FrameCond:
    """A batch of B clips' observations: `mask` (B, T) bool, True where a frame is observed;
    `frames` (B, C, T, H, W) float in model space, the observed frames (zero elsewhere), or
    None when nothing is observed in any row (the null, which does not know the clip's
    shape); `labels` (B,) long class labels (the null label for none) or None for a model
    without classes; `independent` (B,) bool or None (no row): rows whose frames are
    independent images, not a clip (joint image-video training: the temporal layers skip
    them)."""

    mask: torch.Tensor
    frames: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    independent: torch.Tensor | None = None

    def __post_init__(self) -> None:
        m = self.mask
        if not isinstance(m, torch.Tensor) or m.ndim != 2:
            raise ValueError(f"a frame mask must be (B, T), got {getattr(m, 'shape', type(m).__name__)}")
        object.__setattr__(self, "mask", m.to(torch.bool))
        f = self.frames
        if f is not None and (f.ndim != 5 or f.shape[0] != m.shape[0] or f.shape[2] != m.shape[1]):
            raise ValueError(f"observed frames must be (B, C, T, H, W) with (B, T) = {tuple(m.shape)}, "
                             f"got {tuple(f.shape)}")
        if self.labels is not None and tuple(self.labels.shape) != (m.shape[0],):
            raise ValueError(f"labels must be ({m.shape[0]},), got {tuple(self.labels.shape)}")
        if self.independent is not None:
            if tuple(self.independent.shape) != (m.shape[0],):
                raise ValueError(f"independent must be ({m.shape[0]},), got {tuple(self.independent.shape)}")
            object.__setattr__(self, "independent", self.independent.to(torch.bool))

    @classmethod
    def given(cls, frames: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor | None = None) -> FrameCond:
        """The observations of clips `frames` (B, C, T, H, W) at `mask` (B, T) (the frames
        elsewhere are zeroed, so what they held never reaches the network)."""
        mask = torch.as_tensor(mask, dtype=torch.bool, device=frames.device)
        return cls(mask, torch.where(mask[:, None, :, None, None], frames, 0.0), labels)

    def observe(self, x0: torch.Tensor) -> FrameCond:
        """These rows' masks, labels and `independent` with their observed frames taken from
        clips `x0` (training)."""
        given = FrameCond.given(x0, self.mask.to(x0.device), self.labels)
        return FrameCond(given.mask, given.frames, given.labels, self.independent)

    def independent_rows(self) -> FrameCond:
        """These rows with every row marked `independent` (frames made one by one)."""
        return FrameCond(self.mask, self.frames, self.labels, torch.ones(len(self), dtype=torch.bool,
                                                                          device=self.device))

    @property
    def num_frames(self) -> int:
        return self.mask.shape[1]

    def __len__(self) -> int:
        return self.mask.shape[0]

    @property
    def device(self) -> torch.device:
        return self.mask.device

    def _map(self, fn) -> FrameCond:
        return FrameCond(*(None if t is None else fn(t) for t in (self.mask, self.frames, self.labels,
                                                                  self.independent)))

    def __getitem__(self, index) -> FrameCond:
        """Rows `index` (slice, int / bool tensor, or an int: one row as a batch of 1)."""
        index = _rows(index, len(self))
        if isinstance(index, torch.Tensor):
            index = index.to(self.device)
        return self._map(lambda t: t[index])

    def to(self, device: torch.device | str | None) -> FrameCond:
        return self._map(lambda t: t.to(device))

    @staticmethod
    def cat(items: Sequence[FrameCond]) -> FrameCond:
        """One batch of `items` in order; rows without frames get zeros of the others' shape,
        rows without `independent` are clips."""
        items = list(items)
        if not items:
            raise ValueError("FrameCond.cat needs at least one batch")
        if len({c.num_frames for c in items}) > 1:
            raise ValueError(f"FrameCond.cat: batches of {sorted({c.num_frames for c in items})} frames")
        if len({c.labels is None for c in items}) > 1:
            raise ValueError("FrameCond.cat: some batches carry labels and some do not")
        device = items[0].device
        shaped = next((c.frames for c in items if c.frames is not None), None)
        frames = None
        if shaped is not None:
            frames = torch.cat([c.frames.to(device) if c.frames is not None else
                                shaped.new_zeros((len(c), *shaped.shape[1:])).to(device) for c in items])
        labels = None if items[0].labels is None else torch.cat([c.labels.to(device) for c in items])
        independent = None
        if any(c.independent is not None for c in items):
            independent = torch.cat([c.independent.to(device) if c.independent is not None else
                                     torch.zeros(len(c), dtype=torch.bool, device=device) for c in items])
        return FrameCond(torch.cat([c.mask.to(device) for c in items]), frames, labels, independent)

    def keep_given(self, x: torch.Tensor) -> torch.Tensor:
        """Clips `x` (B, C, T, H, W) with the observed frames put back exactly."""
        if self.frames is None:
            return x
        m = self.mask.to(x.device)[:, None, :, None, None]
        return torch.where(m, self.frames.to(x.device, x.dtype), x)


def training_masks(n: int, frames: int, generator: torch.Generator, none: torch.Tensor | None = None
                   ) -> torch.Tensor:
    """(n, frames) bool masks of observed frames for training, drawn from `generator`: each
    row with probability 1/3 observes nothing, 1/3 the first k frames (k uniform in
    1..frames - 1: prediction), 1/3 a random subset (each frame with probability 1/2, at
    least one frame left latent: interpolation and infilling). Rows where `none` is True
    observe nothing (a dropped label drops the frames too, so the joint null is trained as
    often as label dropout says). The same draws are made whatever `none` is."""
    kind = torch.randint(3, (n,), generator=generator)
    k = torch.randint(1, max(frames, 2), (n,), generator=generator)
    subset = torch.rand((n, frames), generator=generator) < 0.5
    first = torch.arange(frames)[None, :] < k[:, None]
    all_seen = subset.all(dim=1)
    subset[all_seen, -1] = False
    mask = torch.where((kind == 1)[:, None], first, torch.where((kind == 2)[:, None], subset, False))
    if frames < 2:
        mask[:] = False
    if none is not None:
        mask[none.to(torch.bool)] = False
    return mask


GIVEN_MODES = ("first", "every", "last")


def parse_given(text: str, frames: int) -> torch.Tensor:
    """A `--given` value as a (frames,) bool mask of observed frames: "first:K" (the first
    K: prediction), "last:K", "every:K" (frames 0, K, 2K, ...: interpolation with K = 2),
    "frames:I,J,..." (those indices: infilling). One-line errors for anything else."""
    kind, colon, rest = str(text).partition(":")
    kind = kind.strip().lower()
    bad = f"--given {text!r}: expected first:K, last:K, every:K or frames:I,J,... (for {frames} frames)"
    if not colon:
        raise ValueError(bad)
    mask = torch.zeros(frames, dtype=torch.bool)
    try:
        if kind == "frames":
            idx = [int(v) for v in rest.split(",")]
        else:
            k = int(rest)
    except ValueError:
        raise ValueError(bad) from None
    if kind == "frames":
        if any(not 0 <= i < frames for i in idx):
            raise ValueError(f"--given {text!r}: frame indices must be in 0..{frames - 1}")
        mask[idx] = True
    elif kind in ("first", "last"):
        if not 1 <= k < frames:
            raise ValueError(f"--given {text!r}: K must be in 1..{frames - 1} (some frames must be left to make)")
        mask[:k] = True
        if kind == "last":
            mask = mask.flip(0)
    elif kind == "every":
        if not 2 <= k < frames:
            raise ValueError(f"--given {text!r}: K must be in 2..{frames - 1}")
        mask[::k] = True
    else:
        raise ValueError(bad)
    if mask.all():
        raise ValueError(f"--given {text!r} observes every frame: nothing is left to make")
    return mask
