"""`train(cfg)`: check the run directory, set up the processes, and run a `Trainer`
(train/trainer.py) in each. A resumed run uses its own config.yaml, with only its length
changed when asked."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from difforge.config import ConfigError, RunConfig, load_config, save_config
from difforge.runs import is_run_dir, step_dirs
from difforge.runtime import autocast_dtype, resolve_device
from difforge.train import distributed
from difforge.train.checkpoint import clean_stale
from difforge.train.trainer import (  # noqa: F401 - the training API, re-exported
    MAX_BAD_STEPS, VAL_MAX_IMAGES, Trainer, TrainingError, TrainResult, model_info,
)


def _resolve_run(cfg: RunConfig, resume: bool, length: dict | None = None) -> tuple[RunConfig, Path]:
    """The config to train with (a resumed run's own config.yaml, its length changed by
    `length`: max_steps / epochs); writes nothing."""
    from difforge.io.outputs import OutputError, check_output_dir

    run_dir = Path(cfg.out)
    if resume:
        saved = run_dir / "config.yaml"
        if not saved.is_file():
            raise ConfigError(f"cannot resume: {run_dir} has no config.yaml (no run there yet)")
        cfg = load_config(saved)
        if length:
            changed = {k: v for k, v in length.items() if v is not None}
            if "epochs" in changed and "max_steps" not in changed:
                changed["max_steps"] = None  # --epochs alone sets the length: max_steps would win over it
            cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **changed))
        return cfg, run_dir
    try:
        check_output_dir(run_dir, holds="run", is_ours=is_run_dir, allow_ours=True)
    except OutputError as e:
        raise ConfigError(str(e)) from None
    if step_dirs(run_dir / "checkpoints"):
        raise ConfigError(
            f"{run_dir} already holds a run with checkpoints; pass --resume to continue it or choose another --out"
        )
    return cfg, run_dir


def create_run_dir(cfg: RunConfig, run_dir: Path, resume: bool, info: dict, skipped: list) -> None:
    """Write config.yaml (new, or a resumed run with a new length), the model card and the
    list of skipped files; remove what an interrupted checkpoint write left. Rank 0 only."""
    if not resume:
        (run_dir / "samples").mkdir(parents=True, exist_ok=True)
    if not resume or load_config(run_dir / "config.yaml") != cfg:
        save_config(cfg, run_dir / "config.yaml")
    for name in clean_stale(run_dir / "checkpoints"):
        print(f"removed {name}: an incomplete checkpoint left by an interrupted write")
    if skipped:
        report = run_dir / "skipped_files.txt"
        report.write_text("".join(f"{path}\t{reason}\n" for path, reason in skipped))
        print(f"warning: skipped {len(skipped)} unusable file(s); list in {report}")
    (run_dir / "model.json").write_text(json.dumps(info, indent=2))


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
    cfg, run_dir = _resolve_run(cfg, resume, length)
    t = cfg.train
    from difforge.train.logging import missing_backends

    for problem in missing_backends(t.wandb, t.tensorboard):
        raise ConfigError(problem)
    device = distributed.check_world(world, resolve_device(t.device), t.batch_size)
    amp_dtype = autocast_dtype(t.precision, device)
    created = distributed.init(world, device)
    try:
        trainer = Trainer(cfg, run_dir, world, device, amp_dtype, progress=progress and world.main,
                          stop_after=stop_after)
        return trainer.run(resume)
    finally:
        distributed.shutdown(created)
