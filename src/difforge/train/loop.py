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
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from difforge.config import ConfigError, RunConfig, config_to_dict, load_config, save_config
from difforge.data import load_dataset, to_model_input
from difforge.data.batches import EpochBatches
from difforge.diffusion.frameworks import FrameworkSpec
from difforge.models import build_model, size_multiple
from difforge.models.card import Architecture, ModelCard
from difforge.models.conditioning import ClassLabels, LowResImage, Unconditional
from difforge.train import distributed
from difforge.train.checkpoint import (
    clean_stale, find_resumable, load_checkpoint, restore_rng, rng_state, save_checkpoint, step_dirs,
)
from difforge.train.ema import EMA
from difforge.train.optim import build_optimizer, build_scheduler
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


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available")
    return dev


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type != "cuda":
        raise ConfigError("precision fp16 needs a CUDA device; use bf16 on the CPU")
    return torch.float16


def model_card(cfg: RunConfig, bundle, image_size: int, num_classes: int | None) -> ModelCard:
    """What a sampler needs to rebuild the model: written as model.json / config.json.
    ValueError for a super-resolution scale the data's size does not allow."""
    if cfg.model.task == "superres":
        conditioning = LowResImage(cfg.model.scale)
        conditioning.check(bundle.native_size, image_size)
    elif num_classes:
        conditioning = ClassLabels(num_classes)
    else:
        conditioning = Unconditional()
    return ModelCard(Architecture.of_preset(cfg.model.preset), image_size, bundle.native_size, bundle.channels,
                     FrameworkSpec.from_dict(config_to_dict(cfg)["diffusion"]), cfg.diffusion.prediction,
                     conditioning, bundle.class_names if num_classes else None, cfg.data.dataset)


def _resolve_run(cfg: RunConfig, resume: bool) -> tuple[RunConfig, Path]:
    """The config to train with (a resumed run's own config.yaml); writes nothing."""
    run_dir = Path(cfg.out)
    if resume:
        saved = run_dir / "config.yaml"
        if not saved.is_file():
            raise ConfigError(f"cannot resume: {run_dir} has no config.yaml (no run there yet)")
        cfg = load_config(saved)
        return cfg, run_dir
    if step_dirs(run_dir / "checkpoints"):
        raise ConfigError(
            f"{run_dir} already holds a run with checkpoints; pass --resume to continue it or choose another --out"
        )
    return cfg, run_dir


def _create_run_dir(cfg: RunConfig, run_dir: Path, resume: bool) -> None:
    if not resume:
        (run_dir / "samples").mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
    for name in clean_stale(run_dir / "checkpoints"):
        print(f"removed {name}: an incomplete checkpoint left by an interrupted write")


def train(
    cfg: RunConfig, *, resume: bool = False, progress: bool = True, stop_after: int | None = None
) -> TrainResult:
    """Train (or resume) the run described by `cfg`; returns where it ended.

    `stop_after` stops (with a checkpoint) once that many steps are done in total, as a
    preemption would, without changing the run's schedule. Under torchrun every process
    calls this with the same arguments (train/distributed.py).
    """
    world = distributed.world_from_env()
    cfg, run_dir = _resolve_run(cfg, resume)
    t = cfg.train
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
    if t.batch_size > len(train_set):
        raise ConfigError(f"batch size {t.batch_size} is larger than the training set ({len(train_set)} images)")
    try:
        card = model_card(cfg, bundle, image_size, num_classes)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    cond_image = None  # superres: makes each batch's conditioning image from x0 (SR3)
    if card.task == "superres":
        cond_image = functools.partial(card.conditioning.from_clean, native_size=card.native_size)
    if world.main:  # every check has passed: now the run directory is written
        _create_run_dir(cfg, run_dir, resume)
        if bundle.skipped:
            report = run_dir / "skipped_files.txt"
            report.write_text("".join(f"{path}\t{reason}\n" for path, reason in bundle.skipped))
            print(f"warning: skipped {len(bundle.skipped)} unusable file(s); list in {report}")
        card.save(run_dir / "model.json")

    torch.manual_seed(t.seed)
    model = build_model(**card.build_kwargs()).to(device)
    ema = EMA(model, t.ema_decay, t.ema_warmup)
    net = distributed.wrap(model, world, device)  # the loss runs through `net` (DDP syncs gradients)
    if world.rank:  # in-model randomness (dropout): a distinct stream on each rank
        torch.manual_seed(t.seed + 7919 * world.rank)
    objective = card.denoiser(net)  # the loss runs through `net`: DDP's wrapper under data parallelism
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
            scheduler.load_state_dict(state["scheduler"])
            gen.set_state(state["rng"]["train"])
            step = last_saved = int(state["step"])
            rollbacks, skipped = int(state.get("rollbacks", 0)), int(state.get("skipped", 0))
            restore_rng(state["rng"], world, device, t.seed, step)
            say(f"resuming {run_dir} from {ckpt.name} (step {step} of {total})")
        else:
            say(f"no checkpoint in {run_dir}; starting from step 0")

    from difforge.train.logging import MetricsLogger, NullLogger  # optional backends load lazily

    if world.main:
        logger = MetricsLogger(run_dir, config_to_dict(cfg), wandb=t.wandb, tensorboard=t.tensorboard)
    else:
        logger = NullLogger()
    in_training_eval = None  # FD/KID of the EMA weights every eval_every steps, on rank 0
    if t.eval_every and world.main:
        from difforge.eval.during_training import InTrainingEval

        in_training_eval = InTrainingEval(cfg.data, bundle, card, device, n=t.eval_samples, seed=t.seed, log=say)

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
            }
            path = save_checkpoint(
                run_dir / "checkpoints", step, model.state_dict(), ema.shadow.state_dict(), state,
                keep=t.keep_checkpoints,
            )
        distributed.barrier(world)
        last_saved = step
        return path

    def sample_grids(name: str, per_class: int = 1) -> None:
        if not world.main:
            return
        from difforge.pipeline import Pipeline  # sampling code, shared with `difforge sample`

        if cond_image is not None:  # superres: held-out images, low-res, upscaled (Pipeline.upscale)
            preview = (bundle.val if bundle.val is not None and len(bundle.val) else train_set).images
            for tag, net in (("-raw", model), ("", ema.shadow)):
                was_training = net.training
                net.eval()
                path = Pipeline(card.denoiser(net), card, device).save_upscale_grid(
                    preview, run_dir / "samples" / f"{name}{tag}.png")
                net.train(was_training)
                logger.log_image(step, f"samples{tag}", path)
            return
        for tag, net in (("-raw", model), ("", ema.shadow)):  # NAME.png: EMA weights
            was_training = net.training
            net.eval()
            pipe = Pipeline(card.denoiser(net), card, device)
            labels = pipe.default_labels(per_class=per_class)
            images, _ = pipe.generate(labels=labels, n=None if labels is not None else 10 * per_class, seed=0)
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
            loss = card.denoiser(net).loss(x0, cond, generator=g, autocast=amp_dtype)
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
                    cond = card.conditioning.drop(train_set.labels[idx], cfg.model.label_dropout, gen)[rows]
                    cond = cond.to(device)
                if cond_image is not None:
                    cond = cond_image(x0)
                loss = objective.loss(x0, cond, generator=gen, autocast=amp_dtype, rows=rows, global_batch=len(idx))
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
        return TrainResult(run_dir, step, True, world.rank)

    if step % batches.steps_per_epoch != 0:
        run_validation()
    path = checkpoint() if last_saved != step else run_dir / "checkpoints" / f"step-{step}"
    if skipped:
        say(f"note: {skipped} of {step} steps were skipped for a non-finite loss or gradients "
            f"({rollbacks} rollback(s)); see skipped_nonfinite in metrics.jsonl")
    sample_grids("final", per_class=10)
    logger.log_artifact(path)
    logger.close()
    distributed.barrier(world)  # the other ranks wait for rank 0's final samples
    return TrainResult(run_dir, step, False, world.rank)
