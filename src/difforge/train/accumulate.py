"""Gradient accumulation: one optimiser step's batch in `parts` micro-batches.

The step's noise levels and noise are drawn once for the whole (global) batch, as without
accumulation: before each micro-batch the training generator is put back to the step's
starting state and `Denoiser.loss` draws the same global batch and keeps the micro-batch's
rows (the mechanism data parallelism uses for its ranks). Each micro-batch's mean loss is
weighted by its share of the rank's rows, so the summed gradients are those of the one
big batch, up to float rounding, and the generator ends where one big draw leaves it.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import torch


def micro_bounds(rows: int, parts: int) -> list[int]:
    """Boundaries of `parts` near-equal, non-empty pieces of `rows` rows: [0, ..., rows]."""
    if not 1 <= parts <= rows:
        raise ValueError(f"cannot split {rows} rows into {parts} micro-batches")
    return [rows * k // parts for k in range(parts + 1)]


def accumulate_gradients(objective, scaler, x0: torch.Tensor, cond, *, parts: int, generator: torch.Generator,
                         autocast: torch.dtype | None, rows: slice, global_batch: int,
                         no_sync: Callable[[], contextlib.AbstractContextManager] | None = None) -> tuple[bool, float]:
    """Backward of this rank's batch (`x0`, `cond`: rows `rows` of the global batch) in
    `parts` micro-batches; gradients accumulate in the parameters' `.grad`. `no_sync`
    (DistributedDataParallel's) defers the all-reduce to the last micro-batch. Returns
    (every micro-batch's loss finite, the batch's mean loss)."""
    start = generator.get_state()
    bounds = micro_bounds(len(x0), parts)
    finite, total = True, 0.0
    for k in range(parts):
        a, b = bounds[k], bounds[k + 1]
        generator.set_state(start)
        last = k == parts - 1
        with no_sync() if no_sync is not None and not last else contextlib.nullcontext():
            loss = objective.loss(x0[a:b], None if cond is None else cond[a:b], generator=generator,
                                  autocast=autocast, rows=slice(rows.start + a, rows.start + b),
                                  global_batch=global_batch) * ((b - a) / len(x0))
            scaler.scale(loss).backward()
        value = loss.item()
        finite, total = finite and math.isfinite(value), total + value
    return finite, total
