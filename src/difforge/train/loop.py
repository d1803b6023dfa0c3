"""The training loop: data -> loss -> AdamW step -> EMA, with logging, samples,
validation and checkpoints that resume bit for bit.

Faults it survives (docs/training.md): SIGTERM/Ctrl-C (finish the step, checkpoint,
exit), kill -9 (resume from the newest complete checkpoint), non-finite losses or
gradients (skip the step; after MAX_BAD_STEPS in a row roll back to the last checkpoint
once, then stop naming the likely cause). Under torchrun every process runs `train`
(data parallel, train/distributed.py); rank 0 alone writes the run directory.
"""

from __future__ import annotations

import functools
import json
import math
import time
import warnings
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from difforge.config import ConfigError, RunConfig, config_to_dict, load_config, save_config
from difforge.data import load_dataset, to_model_input
from difforge.data.batches import EpochBatches
from difforge.diffusion.frameworks import make_noise, prediction_of
from difforge.models import build_model, size_multiple
from difforge.train import distributed
from difforge.train.checkpoint import (
    clean_stale, find_resumable, load_checkpoint, restore_rng, rng_state, save_checkpoint, step_dirs,
)
from difforge.train.ema import EMA
from difforge.train.objective import drop_labels, framework_loss
from difforge.runs import is_run_dir
from difforge.runtime import autocast_dtype, resolve_device  # noqa: F401 - re-exported
from difforge.train.optim import build_optimizer, build_scheduler, set_schedule_step
from difforge.train.signals import StopFlag

VAL_MAX_IMAGES = 2000  # validation loss is measured on at most this many held-out images
MAX_BAD_STEPS = 20  # consecutive non-finite steps before a rollback (once), then a stop


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. non-finite losses persist after a rollback)."""


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    stopped_early: bool
    rank: int = 0  # under torchrun, only rank 0 reports
    signum: int | None = None  # the signal (SIGTERM, SIGINT) that stopped the run early, if one did


def model_info(cfg: RunConfig, bundle, image_size: int, num_classes: int | None) -> dict:
    """What a sampler needs to rebuild the model: written as model.json / config.json."""
    return {
        "format": "difforge-model",
        "version": 1,
        "model": {"preset": cfg.model.preset, "in_channels": bundle.channels, "num_classes": num_classes},
        "diffusion": config_to_dict(cfg)["diffusion"],
        "prediction": prediction_of(cfg.diffusion),
        "image_size": image_size,
        "native_size": bundle.native_size,
        "channels": bundle.channels,
        "class_names": bundle.class_names if num_classes else None,
        "dataset": cfg.data.dataset,
    }


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


def _create_run_dir(cfg: RunConfig, run_dir: Path, resume: bool) -> None:
    if not resume:
        (run_dir / "samples").mkdir(parents=True, exist_ok=True)
    if not resume or load_config(run_dir / "config.yaml") != cfg:  # new, or resumed with a new length
        save_config(cfg, run_dir / "config.yaml")
    for name in clean_stale(run_dir / "checkpoints"):
        print(f"removed {name}: an incomplete checkpoint left by an interrupted write")


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
        return _train(cfg, run_dir, world, device, amp_dtype, resume, progress and world.main, stop_after)
    finally:
        distributed.shutdown(created)


def _train(
    cfg: RunConfig,
    run_dir: Path,
    world: distributed.World,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    resume: bool,
    progress: bool,
    stop_after: int | None,
) -> TrainResult:
    t = cfg.train
    say = print if world.main else (lambda *a, **k: None)
    bundle = load_dataset(cfg.data)
    train_set = bundle.train
    num_classes = train_set.num_classes if cfg.model.conditional and cfg.model.task == "generate" else None
    mult = size_multiple(cfg.model.preset)
    image_size = cfg.data.image_size or math.ceil(bundle.native_size / mult) * mult
    if image_size % mult:
        raise ConfigError(f"image size {image_size} is not a multiple of {mult}, as model {cfg.model.preset!r} needs")
    if t.batch_size > len(train_set):  # a small set: train with all of it per step, and say so
        smaller = len(train_set) - len(train_set) % world.size
        if smaller < 1:
            raise ConfigError(f"the training set has {len(train_set)} images, fewer than the {world.size} processes")
        say(f"note: the training set has {len(train_set)} images, fewer than the batch size {t.batch_size}: "
            f"training with batches of {smaller}")
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(t, batch_size=smaller))
        t = cfg.train
    info = model_info(cfg, bundle, image_size, num_classes)
    cond_image = None  # superres: makes each batch's conditioning image from x0 (SR3)
    if cfg.model.task == "superres":
        from difforge.tasks.superres import training_setup

        try:
            info, cond_image = training_setup(info, cfg.model.scale)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    if world.main:  # every check has passed: now the run directory is written
        _create_run_dir(cfg, run_dir, resume)
        if bundle.skipped:
            report = run_dir / "skipped_files.txt"
            report.write_text("".join(f"{path}\t{reason}\n" for path, reason in bundle.skipped))
            print(f"warning: skipped {len(bundle.skipped)} unusable file(s); list in {report}")
        (run_dir / "model.json").write_text(json.dumps(info, indent=2))

    torch.manual_seed(t.seed)
    model = build_model(cfg.model.preset, in_channels=bundle.channels, num_classes=num_classes,
                        cond_channels=info["model"].get("cond_channels", 0)).to(device)
    ema = EMA(model, t.ema_decay, t.ema_warmup)
    net = distributed.wrap(model, world, device)  # the loss runs through `net` (DDP syncs gradients)
    if world.rank:  # in-model randomness (dropout): a distinct stream on each rank
        torch.manual_seed(t.seed + 7919 * world.rank)
    schedule = make_noise(cfg.diffusion)  # the framework's noise process (diffusion/frameworks.py)
    diffusion_loss = functools.partial(  # every framework's loss; for DDPM eps it is ddpm_loss
        framework_loss, prediction=prediction_of(cfg.diffusion), min_snr_gamma=cfg.diffusion.min_snr_gamma)
    batches = EpochBatches(len(train_set), t.batch_size, seed=t.seed)
    total = t.max_steps or (t.epochs or 1) * batches.steps_per_epoch
    optimizer = build_optimizer(model, t)
    scheduler = build_scheduler(optimizer, t, total)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    gen = torch.Generator().manual_seed(t.seed + 1)

    def newest_checkpoint() -> Path | None:
        """The newest checkpoint that verifies, as rank 0 sees it, on every rank."""
        found = None
        if world.main:
            found, problems = find_resumable(run_dir / "checkpoints")
            for p in problems:
                print(f"warning: skipping checkpoint: {p}")
        return distributed.broadcast(found, world)

    def load_weights_and_optimizer(ckpt: Path) -> dict:
        m_sd, e_sd, state = load_checkpoint(ckpt)
        model.load_state_dict(m_sd)
        ema.shadow.load_state_dict(e_sd)
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        return state

    step, rollbacks, skipped, last_saved = 0, 0, 0, None
    if resume:
        ckpt = newest_checkpoint()
        if ckpt is not None:
            state = load_weights_and_optimizer(ckpt)
            gen.set_state(state["rng"]["train"])
            step = last_saved = int(state["step"])
            saved_total = state.get("total_steps") or state["scheduler"].get("total_steps") or total
            if step > total:
                raise ConfigError(f"{run_dir} is already at step {step}: a length of {total} steps would shorten "
                                  f"it below that")
            if saved_total == total:
                scheduler.load_state_dict(state["scheduler"])
            else:  # extended (or shortened): the schedule is laid over the new length
                set_schedule_step(scheduler, step)
                say(f"run length changed from {saved_total} to {total} steps; learning-rate schedule laid over "
                    f"the new length")
            rollbacks, skipped = int(state.get("rollbacks", 0)), int(state.get("skipped", 0))
            restore_rng(state["rng"], world, device, t.seed, step)
            say(f"resuming {run_dir} from {ckpt.name} (step {step} of {total})")
        else:
            say(f"no checkpoint in {run_dir}; starting from step 0")
        if step >= total and (run_dir / "samples" / "final.png").is_file() or step >= total and not t.final_grid:
            say(f"{run_dir} is finished (step {step} of {total}); nothing to do. Pass --max-steps N to extend it.")
            return TrainResult(run_dir, step, False, world.rank)

    from difforge.train.logging import MetricsLogger, NullLogger  # optional backends load lazily

    if world.main:
        logger = MetricsLogger(run_dir, config_to_dict(cfg), wandb=t.wandb, tensorboard=t.tensorboard)
    else:
        logger = NullLogger()
    in_training_eval = None  # FD/KID of the EMA weights every eval_every steps, on rank 0
    if t.eval_every and world.main:
        from difforge.eval.during_training import InTrainingEval

        in_training_eval = InTrainingEval(cfg.data, bundle, info, schedule, device, n=t.eval_samples, seed=t.seed, log=say)

    def checkpoint() -> Path:
        """Every rank calls this (their RNG streams are gathered); rank 0 writes."""
        nonlocal last_saved
        ranks = distributed.gather(rng_state(device), world)
        if world.distributed:  # weights and EMA must be identical on every rank
            digests = distributed.gather((distributed.digest(model), distributed.digest(ema.shadow)), world)
            if len(set(digests)) > 1:
                raise TrainingError(f"the ranks' weights or EMA differ at step {step} (digests {digests})")
        path = run_dir / "checkpoints" / f"step-{step}"
        if world.main:
            state = {
                "step": step,
                "ema": ema.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "rng": {"train": gen.get_state(), **ranks[0], "ranks": ranks},
                "rollbacks": rollbacks,
                "skipped": skipped,  # steps skipped for a non-finite loss or gradients, in all
                "world_size": world.size,
                "total_steps": total,  # the run's length when this was written (extension re-lays the LR schedule)
            }
            path = save_checkpoint(
                run_dir / "checkpoints", step, model.state_dict(), ema.shadow.state_dict(), state,
                keep=t.keep_checkpoints,
            )
        distributed.barrier(world)
        last_saved = step
        return path

    def sample_grids(name: str, per_class: int = 1) -> None:
        """NAME.png from the EMA weights and NAME-raw.png from the raw ones (unless the EMA
        is still a plain copy of them: the two grids would be identical)."""
        if not world.main:
            return
        nets = (("", ema.shadow),) if ema.step <= ema.warmup else (("-raw", model), ("", ema.shadow))
        if cond_image is not None:  # superres: held-out images, low-res, upscaled (difforge.tasks.superres)
            from difforge.tasks.superres import save_preview

            preview = (bundle.val if bundle.val is not None and len(bundle.val) else train_set).images
            for tag, net in nets:
                was_training = net.training
                net.eval()
                path = save_preview(net, schedule, info, device, preview, run_dir / "samples" / f"{name}{tag}.png")
                net.train(was_training)
                logger.log_image(step, f"samples{tag}", path)
            return
        from difforge.pipeline import Pipeline  # sampling code, shared with `difforge sample`

        from tqdm.auto import tqdm

        for tag, net in nets:
            was_training = net.training
            net.eval()
            pipe = Pipeline(net, schedule, info, device)
            labels = pipe.default_labels(per_class=per_class)
            n = len(labels) if labels is not None else 10 * per_class
            steps = len(pipe.sigmas("ddim")) - 1
            with tqdm(total=steps * -(-n // 100), desc=f"samples/{name}{tag}.png", unit="step", leave=False,
                      disable=not progress, dynamic_ncols=True) as grid_bar:
                images, _ = pipe.generate(labels=labels, n=None if labels is not None else n, seed=0,
                                          callback=lambda d: grid_bar.update(1))
            net.train(was_training)
            path = pipe.save_grid(images, run_dir / "samples" / f"{name}{tag}.png", labels)
            logger.log_image(step, f"samples{tag}", path)

    val_images = bundle.val.images[:VAL_MAX_IMAGES] if bundle.val is not None and len(bundle.val) else None
    val_labels = None
    if val_images is not None and num_classes:
        val_labels = bundle.val.labels[:VAL_MAX_IMAGES]

    @torch.no_grad()
    def validation_loss(net) -> float:
        g = torch.Generator().manual_seed(12345)  # same t and noise every time: comparable
        was_training = net.training
        net.eval()
        total_loss, count = 0.0, 0
        for i in range(0, len(val_images), 256):
            x0 = to_model_input(val_images[i : i + 256], image_size).to(device)
            cond = val_labels[i : i + 256].to(device) if val_labels is not None else None
            cond = cond_image(x0) if cond_image is not None else cond
            loss = diffusion_loss(net, schedule, x0, cond, g, amp_dtype)
            total_loss += loss.item() * len(x0)
            count += len(x0)
        net.train(was_training)
        return total_loss / count

    def run_validation() -> None:
        if val_images is None or not world.main:
            return
        logger.log(step, {"epoch": step / batches.steps_per_epoch, "val_loss": validation_loss(model),
                          "val_loss_ema": validation_loss(ema.shadow)})

    from tqdm.auto import tqdm

    bar = tqdm(total=total, initial=step, disable=not progress, desc="train", dynamic_ncols=True, mininterval=1.0)
    model.train()
    bad_in_a_row = 0
    stopped = False
    rows = world.share(t.batch_size)  # this rank's rows of every global batch
    t_last, imgs_since = time.perf_counter(), 0
    end = min(total, stop_after) if stop_after is not None else total

    def non_finite_streak() -> None:
        """MAX_BAD_STEPS non-finite steps in a row: roll back once, else stop."""
        nonlocal bad_in_a_row, rollbacks
        ckpt = newest_checkpoint() if rollbacks == 0 else None
        if ckpt is not None:
            load_weights_and_optimizer(ckpt)
            rollbacks += 1
            bad_in_a_row = 0
            logger.log(step, {"rollback_to": int(ckpt.name[5:])})
            say(f"warning: {MAX_BAD_STEPS} non-finite steps in a row at step {step}: rolled weights, EMA and "
                f"optimizer back to {ckpt.name}; going on from step {step} with the following batches")
            return
        if amp_dtype == torch.float16:
            hint = "fp16 overflow is the likely cause: train with --precision bf16 (or fp32)"
        else:
            hint = f"the learning rate ({t.lr:g}) is the likely cause: try a lower --lr"
        when = "again after rolling back to the last checkpoint" if rollbacks else "and no checkpoint to roll back to"
        raise TrainingError(f"{MAX_BAD_STEPS} non-finite losses or gradients in a row at step {step}, {when}; {hint}")

    try:
        with StopFlag() as stop:
            while step < end:
                idx = batches.batch(step)  # the global batch: the same on every rank
                x0 = to_model_input(train_set.images[idx[rows]], image_size).to(device)
                cond = None
                if num_classes:  # labels dropped per sample of the global batch, then sliced
                    cond = drop_labels(train_set.labels[idx], cfg.model.label_dropout, num_classes, gen)[rows]
                    cond = cond.to(device)
                if cond_image is not None:
                    cond = cond_image(x0)
                loss = diffusion_loss(net, schedule, x0, cond, gen, amp_dtype, rows=rows, global_batch=len(idx))
                optimizer.zero_grad(set_to_none=True)
                finite, loss_value = bool(torch.isfinite(loss)), loss.item()
                signalled = stop.signum is not None
                if world.distributed:  # one collective: mean loss; any rank non-finite; any rank signalled
                    flags = torch.tensor([loss_value if finite else 0.0, not finite, signalled], dtype=torch.float64)
                    flags = distributed.sum_all(flags.to(device), world).tolist()
                    loss_value, finite, signalled = flags[0] / world.size, flags[1] == 0, flags[2] > 0
                ok = finite
                if finite:
                    scaler.scale(loss).backward()
                    if scaler.is_enabled():  # fp16: the scaler skips overflowing steps and lowers its scale
                        if t.grad_clip > 0:
                            scaler.unscale_(optimizer)
                            torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
                    else:  # gradients are identical on every rank after DDP's all-reduce: so is this test
                        if t.grad_clip > 0:
                            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
                        else:
                            norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])
                        ok = bool(torch.isfinite(norm))
                    if ok:
                        scaler.step(optimizer)
                        scaler.update()
                if ok:
                    scheduler.step()
                    ema.update(model)
                    bad_in_a_row = 0
                    imgs_since += len(idx)
                else:
                    with warnings.catch_warnings():  # a skipped first step is not a misordered scheduler
                        warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step")
                        scheduler.step()
                    bad_in_a_row += 1
                    skipped += 1
                    what = "loss" if not finite else "gradients"
                    logger.log(step, {"skipped_nonfinite": what})
                    if bad_in_a_row == 1:
                        say(f"warning: non-finite {what} at step {step}: step skipped")
                step += 1
                bar.update(1)
                if bad_in_a_row >= MAX_BAD_STEPS:
                    non_finite_streak()

                if ok and t.log_every and (step % t.log_every == 0 or step == total):
                    now = time.perf_counter()
                    ips = imgs_since / max(now - t_last, 1e-9)
                    t_last, imgs_since = now, 0
                    lr = scheduler.get_last_lr()[0]
                    bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}", img_s=f"{ips:.0f}")
                    logger.log(step, {"epoch": step / batches.steps_per_epoch, "loss": loss_value, "lr": lr,
                                      "img_per_s": ips})
                if step % batches.steps_per_epoch == 0:
                    run_validation()
                if t.sample_every and step % t.sample_every == 0 and step < total:
                    sample_grids(f"step-{step:07d}")
                if in_training_eval is not None and (step % t.eval_every == 0 or step == total):
                    logger.log(step, in_training_eval(ema.shadow))
                if t.checkpoint_every and step % t.checkpoint_every == 0 and step < total:
                    checkpoint()
                if signalled if world.distributed else stop.signum is not None:
                    stopped = True
                    break
    except BaseException:
        bar.close()
        logger.close()
        raise
    bar.close()
    if step < total:  # preempted or asked to stop early: save where we are
        path = checkpoint() if last_saved != step else run_dir / "checkpoints" / f"step-{step}"
        why = (f"signal {stop.signum}" if stop.signum else "a signal to another rank") if stopped else f"stop_after={stop_after}"
        say(f"stopped at step {step} of {total} ({why}); checkpoint {path}; continue with --resume")
        logger.close()
        return TrainResult(run_dir, step, True, world.rank, signum=stop.signum if stopped else None)

    if step % batches.steps_per_epoch != 0:
        run_validation()
    path = checkpoint() if last_saved != step else run_dir / "checkpoints" / f"step-{step}"
    if skipped:
        say(f"note: {skipped} of {step} steps were skipped for a non-finite loss or gradients "
            f"({rollbacks} rollback(s)); see skipped_nonfinite in metrics.jsonl")
    if t.final_grid:
        say("drawing samples/final.png (10 per class, EMA weights)")
        sample_grids("final", per_class=10)
    logger.log_artifact(path)
    logger.close()
    distributed.barrier(world)  # the other ranks wait for rank 0's final samples
    return TrainResult(run_dir, step, False, world.rank)
