"""moving-fashion-mnist: Fashion-MNIST garments moving and bouncing in a 32x32 frame.

A built-in video set at CPU scale, generated deterministically from a seed (nothing is
downloaded beyond Fashion-MNIST itself), in the spirit of Moving MNIST (Srivastava et al.
2015). A clip is `FRAMES` grayscale frames of `SIZE` x `SIZE` on black:

- one garment, or two with probability `TWO_PROB`, each a Fashion-MNIST image (28x28)
  scaled to `SIDE` x `SIDE` (antialiased): at its native 28 pixels a garment in a 32-pixel
  frame could move by 4 pixels only;
- each garment starts at a uniform integer position (its box's top-left corner in
  0..SIZE - SIDE on both axes) with an integer velocity whose two components each have
  magnitude 1 or 2 pixels per frame and a random sign; it moves in a straight line and
  bounces off the frame's edges (the position is reflected, the velocity component
  negated), so every box stays wholly inside the frame and the positions are exact integers;
- where two garments overlap, the brighter pixel wins (the maximum).

The clip's label is the class of its first garment; its attributes hold "objects" (1 or 2)
and "second_class" (the second garment's class, -1 for none); its `trajectories` (N, 2, T,
2) hold each box's top-left (row, column) per frame, NaN for an absent second garment (for
evaluating motion later). Rendering is one gather per chunk of clips: thousands of clips
take about a second (reading Fashion-MNIST's gzip files takes longer).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from difforge.data.dataset import ImageDataset, VideoDataset
from difforge.data.idx import load_fashion_mnist

NAME = "moving-fashion-mnist"
SIZE = 32  # frame side
SIDE = 16  # a garment's box side
FRAMES = 16
TWO_PROB = 0.5  # probability of a second garment
OBJECTS = 2  # the most garments in a clip (trajectories' K)
TRAIN_CLIPS = 6000  # clips drawn from the 60k training images (train + val)
TEST_CLIPS = 1000  # clips drawn from the 10k test images
_CHUNK = 256  # clips rendered per gather


def bounce(start: torch.Tensor, velocity: torch.Tensor, frames: int, span: int) -> torch.Tensor:
    """Integer positions (..., frames, 2) of points starting at `start` (..., 2) in 0..span
    moving by `velocity` (..., 2) per frame, reflected at 0 and `span`: p <- p + v, then
    p < 0 -> -p, p > span -> 2 span - p, with v negated on that axis. |v| <= span."""
    p, v = start.clone(), velocity.clone()
    out = [p.clone()]
    for _ in range(frames - 1):
        p = p + v
        low, high = p < 0, p > span
        p = torch.where(low, -p, torch.where(high, 2 * span - p, p))
        v = torch.where(low | high, -v, v)
        out.append(p.clone())
    return torch.stack(out, dim=-2)


def render(sprites: torch.Tensor, positions: torch.Tensor, size: int = SIZE) -> torch.Tensor:
    """Clips (N, 1, T, size, size) uint8 of sprites (N, K, s, s) uint8 drawn with their
    top-left corners at integer `positions` (N, K, T, 2) (boxes inside the frame), overlaps
    taking the maximum. Each frame pixel reads its sprite pixel (a gather), black outside."""
    n, k, s, _ = sprites.shape
    grid = torch.arange(size)
    r = grid.view(1, 1, 1, size) - positions[..., 0:1]  # (N, K, T, size): sprite row of each frame row
    c = grid.view(1, 1, 1, size) - positions[..., 1:2]
    inside = ((r >= 0) & (r < s))[..., :, None] & ((c >= 0) & (c < s))[..., None, :]  # (N, K, T, size, size)
    flat = sprites.reshape(n, k, 1, s * s)
    index = (r.clamp(0, s - 1)[..., :, None] * s + c.clamp(0, s - 1)[..., None, :]).flatten(-2)  # (N, K, T, size^2)
    pixels = flat.expand(n, k, index.shape[2], s * s).gather(-1, index).view(inside.shape)
    return torch.where(inside, pixels, 0).amax(dim=1).unsqueeze(1)


def moving_clips(source: ImageDataset, n: int, *, seed: int, frames: int = FRAMES, name: str = NAME
                 ) -> VideoDataset:
    """`n` clips of garments from the labelled 1x28x28 `source`, deterministic given `seed`
    (module docstring)."""
    if n < 1:
        raise ValueError(f"number of clips must be >= 1, got {n}")
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    g = torch.Generator().manual_seed(seed)
    pick = torch.randint(len(source), (n, OBJECTS), generator=g)
    two = torch.rand(n, generator=g) < TWO_PROB
    span = SIZE - SIDE
    start = torch.randint(span + 1, (n, OBJECTS, 2), generator=g)
    speed = torch.randint(1, 3, (n, OBJECTS, 2), generator=g)
    sign = torch.randint(2, (n, OBJECTS, 2), generator=g) * 2 - 1
    positions = bounce(start, speed * sign, frames, span)  # (n, K, T, 2)
    clips = []
    for i in range(0, n, _CHUNK):
        j = min(n, i + _CHUNK)
        garments = source.images[pick[i:j].reshape(-1)].double()  # (m K, 1, 28, 28)
        small = F.interpolate(garments, size=(SIDE, SIDE), mode="bilinear", antialias=True, align_corners=False)
        sprites = small.round().clamp(0, 255).to(torch.uint8).view(j - i, OBJECTS, SIDE, SIDE)
        sprites[:, 1] *= two[i:j].view(-1, 1, 1).to(torch.uint8)  # one garment: the second is blank
        clips.append(render(sprites, positions[i:j]))
    classes = source.labels[pick]  # (n, K)
    trajectories = positions.to(torch.float32)
    trajectories[:, 1][~two] = float("nan")
    return VideoDataset(
        images=torch.cat(clips),
        labels=classes[:, 0].clone(),
        class_names=list(source.class_names),
        name=name,
        attributes={"objects": 1 + two.to(torch.int64), "second_class": torch.where(two, classes[:, 1], -1)},
        trajectories=trajectories,
    )


def load_moving_fashion_mnist(root: str | Path | None = None, *, train_clips: int = TRAIN_CLIPS,
                              test_clips: int = TEST_CLIPS, frames: int = FRAMES, seed: int = 0
                              ) -> tuple[VideoDataset, VideoDataset]:
    """(train, test) clips: the training clips from Fashion-MNIST's 60k training images
    (seed `seed`), the test clips from its 10k test images (seed `seed + 1`), so no test
    garment image appears in training. A part gives at most one clip per image it has (a
    small stand-in folder gives a small set). `root`: the Fashion-MNIST folder (default:
    the Debian package's)."""
    train, test = load_fashion_mnist(root)
    return (moving_clips(train, min(train_clips, len(train)), seed=seed, frames=frames),
            moving_clips(test, min(test_clips, len(test)), seed=seed + 1, frames=frames))
