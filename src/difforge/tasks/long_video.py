"""Videos longer than the training clips: sampling schemes over windows of frames.

A video model makes clips of T frames with any of them given (`Pipeline.sample_video`). A
video of L > T frames is made window by window, as in Flexible Diffusion Models (Harvey
et al. 2022, Section 4): each stage hands the model a window of exactly T frames of the
long video, some already made (observed: the stage's conditioning) and the others new (the
frames it generates). A scheme is the list of stages, `plan(scheme, length, window,
context)`, computed without the network, so it can be printed and checked; `run_plan`
executes one with a pipeline.

- `autoregressive`: the first window makes frames 0..T-1; every later one conditions on the
  last K frames made and generates the next T-K (the last window, shifted to end at frame
  L-1, conditions on more).
- `hierarchical` (FDM's Hierarchy-2): first M >= T keyframes spread evenly over the whole
  length (frames 0 and L-1 among them) are made autoregressively, T at a time, each window
  after the first conditioning on the last K keyframes; then the frames between them are
  filled by windows of T consecutive frames that condition on every frame already made in
  them (at least the K before the first new one, the keyframes inside and the one the
  window ends on). M is the smallest count >= T whose gaps are at most T-K frames, so every
  filling window ends on a keyframe (only the first one, which starts at frame 0, may not).

Frames given by the user are made before the first stage: no stage generates them, and
the stages condition on them where they fall in a window (hierarchical: the keyframe level
runs over the keyframes and the given frames together).

Placing frames in a window: the frames of a stage go into the model's T slots in the order
of their indices, one slot each, whatever the gaps between them (as FDM does). The network
(`stunet`) has no frame timestamps: its temporal convolutions and the relative position
biases of its temporal attention see slot offsets only, so a window of consecutive frames
looks like a training clip, while keyframes k apart look like a clip moving k times faster
than the training data. Every autoregressive window and every filling window is
consecutive frames; only the hierarchical keyframe windows are not.

Noise: stage j of clip i draws from seed `seed + i + j * 2**32`, so stage 0 of a video of T
frames is `sample_video`'s clip and a clip does not change with the number of clips.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

SCHEMES = ("autoregressive", "hierarchical")
STAGE_SEEDS = 2**32  # stage j of clip i uses seed + i + j * STAGE_SEEDS


@dataclass(frozen=True)
class Stage:
    """One call of the model: `generate` the frames it makes, `condition` the frames already
    made that it observes (both sorted indices into the long video). `window` is their union
    in order: slot k of the model's clip holds frame window[k]."""

    generate: tuple[int, ...]
    condition: tuple[int, ...]

    @property
    def window(self) -> tuple[int, ...]:
        return tuple(sorted(self.generate + self.condition))

    def __str__(self) -> str:
        return f"generate {_ranges(self.generate)} | condition on {_ranges(self.condition) or 'nothing'}"


def _ranges(idx: Sequence[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2,5,7-8'."""
    parts, idx = [], list(idx)
    i = 0
    while i < len(idx):
        j = i
        while j + 1 < len(idx) and idx[j + 1] == idx[j] + 1:
            j += 1
        parts.append(str(idx[i]) if i == j else f"{idx[i]}-{idx[j]}")
        i = j + 1
    return ",".join(parts)


def default_context(window: int) -> int:
    """The default number of frames a window conditions on: half the window (FDM's choice)."""
    return max(1, window // 2)


def check_sizes(scheme: str, length: int, window: int, context: int | None) -> int:
    """The context K to use; one-line errors for an unknown scheme or sizes that do not fit."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}: expected one of {', '.join(SCHEMES)}")
    if window < 2:
        raise ValueError(f"the model's window must be at least 2 frames, got {window}")
    if length < window:
        raise ValueError(f"a video of {length} frames is shorter than the model's {window}-frame window")
    k = default_context(window) if context is None else int(context)
    if not 1 <= k < window:
        raise ValueError(f"context {k}: must be in 1..{window - 1} (the frames each {window}-frame window "
                         "conditions on; the rest are made)")
    return k


def _sweep(order: Sequence[int], made: set[int], window: int, context: int) -> list[Stage]:
    """Stages making every frame of `order` (sorted indices) not in `made`, windows of
    `window` consecutive entries of `order`: each starts `context` entries before the first
    frame not made yet (clamped to the ends) and, where a frame made already lies ahead in
    it, is moved back to end on the last such frame (more context, no frame left without a
    frame after it). Updates `made`."""
    order, stages = list(order), []
    while True:
        todo = [r for r, f in enumerate(order) if f not in made]
        if not todo:
            return stages
        q = todo[0]
        start = max(0, min(q - context, len(order) - window))
        ahead = [r for r in range(q + 1, start + window) if order[r] in made]
        if ahead and order[start + window - 1] not in made and ahead[-1] - window + 1 >= 0:
            start = ahead[-1] - window + 1
        frames = order[start : start + window]
        gen = tuple(f for f in frames if f not in made)
        stages.append(Stage(gen, tuple(f for f in frames if f in made)))
        made.update(gen)


def keyframes(length: int, window: int, context: int) -> list[int]:
    """The hierarchical scheme's keyframes: M >= `window` frames spread evenly over
    0..length-1 (both ends included), M the smallest count whose gaps are at most
    window - context frames."""
    gap = window - context
    m = max(window, math.ceil((length - 1) / gap) + 1)
    m = min(m, length)
    return sorted({round(i * (length - 1) / (m - 1)) for i in range(m)})


def plan(scheme: str, length: int, window: int, context: int | None = None,
         given: Sequence[int] = ()) -> list[Stage]:
    """The stages that make a video of `length` frames with a model of `window` frames under
    `scheme` ("autoregressive" or "hierarchical"; see the module's docstring), each window
    conditioning on `context` frames (default: half the window). Frames `given` are made
    before the first stage. Every other frame is generated by exactly one stage, every
    stage conditions only on frames made before it, and every window holds exactly `window`
    frames. One-line errors for an unknown scheme, length < window or context outside
    1..window-1."""
    k = check_sizes(scheme, length, window, context)
    given = sorted({int(g) for g in given})
    if any(not 0 <= g < length for g in given):
        raise ValueError(f"given frames must be in 0..{length - 1}, got {given}")
    if len(given) == length:
        raise ValueError("every frame is given: nothing is left to make")
    made = set(given)
    if scheme == "autoregressive":
        return _sweep(range(length), made, window, k)
    keys = sorted(set(keyframes(length, window, k)) | made)
    return _sweep(keys, made, window, k) + _sweep(range(length), made, window, k)


def check_plan(stages: Sequence[Stage], length: int, window: int, given: Sequence[int] = ()) -> None:
    """Raise ValueError unless `stages` make every frame of 0..length-1 not `given` exactly
    once, each conditioning only on frames made before it, in windows of `window` frames."""
    made = set(given)
    for j, s in enumerate(stages):
        if len(s.window) != window or len(set(s.window)) != window:
            raise ValueError(f"stage {j} has a window of {len(set(s.window))} frames; the model takes {window}")
        if not s.generate:
            raise ValueError(f"stage {j} generates nothing")
        if any(not 0 <= f < length for f in s.window):
            raise ValueError(f"stage {j} names frames outside 0..{length - 1}")
        if not set(s.condition) <= made:
            raise ValueError(f"stage {j} conditions on frames not made yet: {sorted(set(s.condition) - made)}")
        if set(s.generate) & made:
            raise ValueError(f"stage {j} makes frames made already: {sorted(set(s.generate) & made)}")
        made.update(s.generate)
    if len(made) != length:
        raise ValueError(f"frames never made: {sorted(set(range(length)) - made)}")


def run_plan(sample: Callable[..., torch.Tensor], stages: Sequence[Stage], video: torch.Tensor, *,
             seed: int = 0, **options) -> torch.Tensor:
    """Execute `stages` on `video` (N, C, L, h, w) float in [-1, 1], whose frames the stages
    condition on before making them are the given ones; returns the video with every
    generated frame written once. `sample(n, given=..., mask=..., seeds=..., **options)` is
    `Pipeline.sample_video` (clips of the window's frames in order, the frames at `mask`
    given; `given=None, mask=None` when nothing is observed)."""
    video = video.clone()
    n = video.shape[0]
    for j, s in enumerate(stages):
        idx = torch.tensor(s.window)
        cond = set(s.condition)
        mask = torch.tensor([f in cond for f in s.window])
        seeds = [seed + i + j * STAGE_SEEDS for i in range(n)]
        if mask.any():
            clips = sample(n, given=video[:, :, idx], mask=mask, seeds=seeds, **options)
        else:
            clips = sample(n, given=None, mask=None, seeds=seeds, **options)
        new = ~mask
        video[:, :, idx[new]] = clips[:, :, new].to(video.dtype)
    return video


def sample_long_video(pipe, length: int, n: int | None = None, labels: torch.Tensor | None = None, *,
                      scheme: str = "autoregressive", context: int | None = None, given: torch.Tensor | None = None,
                      mask: torch.Tensor | None = None, seed: int = 0, callback: Callable[[dict], None] | None = None,
                      **options) -> torch.Tensor:
    """A video model's clips of `length` frames (more than it was trained on) made under
    `scheme` with `context` frames conditioned on per window: float (N, C, length, h, w) in
    [-1, 1] at the native size. `given` float clips (N or 1, C, length, h, w) and `mask`
    (length,) bool: frames given, returned exactly. `labels`, `callback` and `options`
    (cfg, sampler, steps, grid, ...) go to every `Pipeline.sample_video` call; `callback`
    sees the steps of every stage in turn."""
    if not pipe.takes_clips:
        raise ValueError("this is not a video model: use generate")
    t, c, size = pipe.card.frames, pipe.card.channels, pipe.card.native_size
    if (given is None) != (mask is None):
        raise ValueError("give the observed frames and their mask together")
    given_idx: list[int] = []
    if given is not None:
        mask = torch.as_tensor(mask, dtype=torch.bool)
        if mask.shape != (length,):
            raise ValueError(f"the frame mask must be ({length},) for a video of {length} frames, "
                             f"got {tuple(mask.shape)}")
        if not isinstance(given, torch.Tensor) or given.ndim != 5 or given.shape[2] != length:
            raise ValueError(f"given frames must be clips (N, C, {length}, H, W), got "
                             f"{tuple(given.shape) if isinstance(given, torch.Tensor) else type(given).__name__}")
        n = given.shape[0] if n is None else n
        if given.shape[0] not in (1, n):
            raise ValueError(f"got {given.shape[0]} given clips for {n} clips (give one for all, or one each)")
        given_idx = mask.nonzero().flatten().tolist()
    if n is None or n < 1:
        raise ValueError(f"number of clips must be >= 1, got {n}")
    stages = plan(scheme, length, t, context, given_idx)
    video = torch.zeros(n, c, length, size, size)
    if given is not None:
        video[:, :, mask] = given.float().expand(n, -1, -1, -1, -1)[:, :, mask]

    def sample(k, **kw):
        return pipe.sample_video(k, labels, callback=callback, **kw, **options)

    return run_plan(sample, stages, video, seed=seed)
