"""`train(cfg)`: check the run directory, set up the processes, and run a `Trainer`
(train/trainer.py) in each. A resumed run uses its own config.yaml, with only its length
changed when asked."""

from __future__ import annotations

from difforge.config import ConfigError, RunConfig
from difforge.runtime import autocast_dtype, resolve_device, resolve_precision
from difforge.train import distributed
from difforge.train.run_dir import resolve_run
from difforge.train.trainer import (  # noqa: F401 - the training API, re-exported
    MAX_BAD_STEPS,
    VAL_MAX_IMAGES,
    Trainer,
    TrainingError,
    TrainResult,
    model_card,
)


def train(
    cfg: RunConfig, *, resume: bool = False, progress: bool = True, stop_after: int | None = None,
    length: dict | None = None,
) -> TrainResult:
    """Train (or resume) the run described by `cfg`; returns where it ended.

    With `resume`, `length` ({"max_steps": N} or {"epochs": N}) changes the resumed run's
    length: a finished run is extended, the learning-rate schedule laid over the new length.

    `stop_after` stops (with a checkpoint) once that many steps are done in total, as a
    preemption would, without changing the run's schedule. Under torchrun every process
    calls this with the same arguments (train/distributed.py).
    """
    world = distributed.world_from_env()
    cfg, run_dir = resolve_run(cfg, resume, length)
    t = cfg.train
    from difforge.train.logging import missing_backends

    for problem in missing_backends(t.wandb, t.tensorboard):
        raise ConfigError(problem)
    device = distributed.check_world(world, resolve_device(t.device), t.batch_size)
    amp_dtype = autocast_dtype(t.precision, device)
    if t.precision == "auto" and world.main:
        print(f"precision auto: {resolve_precision('auto', device)} on {device.type} "
              f"({'native bf16' if amp_dtype is not None else 'no native bf16: fp32 is faster here'})")
    created = distributed.init(world, device)
    try:
        trainer = Trainer(cfg, run_dir, world, device, amp_dtype, progress=progress and world.main,
                          stop_after=stop_after)
        return trainer.run(resume)
    finally:
        distributed.shutdown(created)
