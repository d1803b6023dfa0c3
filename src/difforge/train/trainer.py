"""The Trainer: one training run as explicit state and small named steps.

build (data, model, EMA, optimiser, schedule) -> resume (the newest verified checkpoint)
-> step, repeated (loss, backward, skip non-finite, AdamW, EMA) with validate, preview,
evaluate and checkpoint on their schedules -> finish (checkpoint, final grid).

Faults it survives (docs/training.md): SIGTERM/Ctrl-C (finish the step, checkpoint,
exit), kill -9 (resume from the newest complete checkpoint), non-finite losses or
gradients (skip the step; after MAX_BAD_STEPS in a row roll back to the last checkpoint
once, then stop naming the likely cause). Under torchrun every process runs a Trainer
(data parallel, train/distributed.py); rank 0 alone writes the run directory.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from difforge.config import ConfigError, RunConfig, check_clips, config_to_dict
from difforge.data import load_dataset, to_model_input
from difforge.data.batches import EpochBatches, IndependentFrames
from difforge.models import build_model, size_multiple
from difforge.models.card import ModelCard
from difforge.models.frames import FrameCond
from difforge.train import distributed
from difforge.train.accumulate import accumulate_gradients
from difforge.train.checkpoint import (
    CheckpointError,
    find_resumable,
    load_checkpoint,
    restore_rng,
    rng_state,
    save_checkpoint,
)
from difforge.train.ema import EMA
from difforge.train.faults import MAX_BAD_STEPS, FaultHandling, TrainingError
from difforge.train.optim import build_optimizer, build_scheduler, set_schedule_step
from difforge.train.run_dir import model_card
from difforge.train.signals import StopFlag

VAL_MAX_IMAGES = 2000  # validation loss is measured on at most this many held-out images
VAL_MAX_CLIPS = 128  # ... or clips
LATENT_SIGMA_MAX_NOTE = 50.0  # a latent run whose schedule goes above this noise level gets a note


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    stopped_early: bool
    rank: int = 0  # under torchrun, only rank 0 reports
    signum: int | None = None  # the signal (SIGTERM, SIGINT) that stopped the run early, if one did


class Trainer(FaultHandling):
    """Trains the run `cfg` into `run_dir`; `run()` returns where it ended.

    State that changes while training (step, rollbacks, skipped steps, the step of the last
    checkpoint, the non-finite streak) lives in plain attributes, saved in every checkpoint.
    """

    def __init__(self, cfg: RunConfig, run_dir: Path, world: distributed.World, device: torch.device,
                 amp_dtype: torch.dtype | None, *, progress: bool, stop_after: int | None):
        self.cfg, self.run_dir, self.world, self.device = cfg, run_dir, world, device
        self.amp_dtype, self.progress, self.stop_after = amp_dtype, progress, stop_after
        self.say = print if world.main else (lambda *a, **k: None)
        self.step = self.rollbacks = self.skipped = self.bad_in_a_row = 0
        self.last_saved: int | None = None
        self.resuming = False
        self.resume_from: Path | None = None  # the checkpoint a resumed run continues from

    # ------------------------------------------------------------------ build
    def load_data(self) -> None:
        """The dataset, the image size and the batch size (all of a set smaller than it)."""
        cfg, t = self.cfg, self.cfg.train
        self.bundle = load_dataset(cfg.data)
        self.train_set = self.bundle.train
        generate = cfg.model.conditional and cfg.model.task == "generate"
        self.text = cfg.model.text_encoder is not None
        if self.text and self.train_set.captions is None:
            raise ConfigError(f"--text-encoder {cfg.model.text_encoder} needs captions, and dataset "
                              f"{self.train_set.name!r} has none: use a folder with metadata.jsonl or a .txt beside "
                              "each image, or --dataset fashion-colour")
        self.clip = self.load_clip(cfg.model.clip) if cfg.model.clip is not None else None  # unCLIP's decoder
        self.num_classes = self.train_set.num_classes if generate and not self.text and self.clip is None else None
        self.video = getattr(self.train_set, "frames", None) is not None  # clips (N, C, T, H, W)
        if cfg.data.dataset == "prepared":  # a store of images or of clips: now known
            check_clips(cfg, self.video, f"the store {cfg.data.path}")
        mult = size_multiple(cfg.model.preset, cfg.model.architecture)
        self.ae = self.ae_card = None  # latent diffusion: the frozen autoencoder
        if cfg.model.latent is not None:
            self.image_size = self.load_autoencoder(cfg.model.latent)
        else:
            self.image_size = cfg.data.image_size or math.ceil(self.bundle.native_size / mult) * mult
        if self.image_size % mult:
            what = "latent size" if self.ae is not None else "image size"
            raise ConfigError(f"{what} {self.image_size} is not a multiple of {mult}, as model "
                              f"{cfg.model.preset!r} needs")
        if t.batch_size // self.world.size < t.grad_accum:
            raise ConfigError(f"train.grad_accum {t.grad_accum} is more micro-batches than the "
                              f"{t.batch_size // self.world.size} images each process gets per step")
        if t.batch_size > len(self.train_set):  # a small set: train with all of it per step, and say so
            smaller = len(self.train_set) - len(self.train_set) % self.world.size
            if smaller < 1:
                raise ConfigError(f"the training set has {len(self.train_set)} images, fewer than the "
                                  f"{self.world.size} processes")
            self.say(f"note: the training set has {len(self.train_set)} images, fewer than the batch size "
                     f"{t.batch_size}: training with batches of {smaller}")
            self.cfg = dataclasses.replace(cfg, train=dataclasses.replace(t, batch_size=smaller))

    def load_autoencoder(self, path: str) -> int:
        """The frozen autoencoder of a latent run, checked against the data; the latent size."""
        from difforge.models.autoencoder import load_autoencoder

        try:
            self.ae, self.ae_card = load_autoencoder(path, self.device)
        except ValueError as e:
            raise ConfigError(f"--latent: {e}") from None
        ae, native, channels = self.ae_card, self.bundle.native_size, self.train_set.channels
        if (ae.channels, ae.native_size) != (channels, native):
            raise ConfigError(f"--latent {path}: the autoencoder was trained on {ae.channels}-channel "
                              f"{ae.native_size}x{ae.native_size} images; this data is {channels}-channel "
                              f"{native}x{native}")
        if self.cfg.data.image_size not in (None, ae.image_size):
            raise ConfigError(f"--image-size {self.cfg.data.image_size} with --latent: the autoencoder works at "
                              f"{ae.image_size}x{ae.image_size}")
        self.say(f"latent diffusion: {ae.image_size}x{ae.image_size}x{ae.channels} images as "
                 f"{ae.latent_size}x{ae.latent_size}x{ae.latent_channels} latents (f={ae.factor}, scale "
                 f"{ae.scale:.4f}) from {path}")
        return ae.latent_size

    def load_clip(self, path: str):
        """The domain CLIP whose image embeddings condition an unCLIP decoder, checked against the data."""
        from difforge.models.clip import load_clip
        from difforge.models.prior import clip_fingerprint

        try:
            clip = load_clip(path, self.device)
        except (FileNotFoundError, ValueError) as e:
            raise ConfigError(f"--clip: {e}") from None
        c, s = clip.net.arch.channels, clip.image_size
        if (c, s) != (self.train_set.channels, self.bundle.native_size):
            raise ConfigError(f"--clip {path}: the CLIP model takes {c}-channel {s}x{s} images; this data is "
                              f"{self.train_set.channels}-channel {self.bundle.native_size}x{self.bundle.native_size}")
        self.clip_id = (clip.net.arch.embed_dim, clip_fingerprint(path))
        return clip

    def pipeline(self, net: torch.nn.Module):
        """A Pipeline of `net` with this run's card (and autoencoder): previews, in-training FD."""
        from difforge.pipeline import Pipeline

        return Pipeline(self.card.denoiser(net), self.card, self.device, autoencoder=self.ae)

    def describe_model(self) -> None:
        """The model card (model.json) and how a batch's conditioning image is made (SR3)."""
        try:
            self.card = model_card(self.cfg, self.bundle, self.image_size, self.num_classes, self.ae_card,
                                   self.clip_id if self.clip is not None else None)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if self.cfg.model.init_from is not None:
            self.card = self.fine_tuning_card()
        top = self.card.process().sigma_max if self.ae is not None else 0.0
        if top > LATENT_SIGMA_MAX_NOTE:
            self.say(f"note: this noise schedule reaches sigma {top:.0f}; latents are not "
                     "clipped as pixels are, so eps errors are multiplied by it in the first sampling steps. Stable "
                     "Diffusion's schedule (--schedule scaled_linear --set diffusion.beta_start=0.00085 --set "
                     "diffusion.beta_end=0.012) stops at 14.6; see docs/latent.md")
        self.captions = self.val_captions = None  # text: each split's captions, encoded once
        self.cond_image = None  # superres: (x0, captions or None) -> the batch's conditioning (SR3; with text too)
        if self.card.task == "superres":
            spec = self.card.conditioning
            self.cond_image = functools.partial(spec.training_cond, native_size=self.card.native_size)

    def fine_tuning_card(self) -> ModelCard:
        """A fine-tuning run's card (train/finetune.py): on resume the run's own, which names
        the source as it was when the run began."""
        from difforge.train.finetune import adopt, load_source

        saved = self.run_dir / "model.json"
        if self.resuming and saved.is_file():
            card = ModelCard.load(saved)
            if card.source is not None:
                return card
        source_card, source = load_source(self.cfg.model.init_from)
        return adopt(self.card, source_card, source, self.cfg, self.say)

    def build(self) -> None:
        """Network, EMA, noise process, loss, batches, optimiser, LR schedule, grad scaler, RNG."""
        t, world = self.cfg.train, self.world
        torch.manual_seed(t.seed)
        if self.card.source is not None and (self.card.lora is not None or self.resume_from is None):
            from difforge.train.finetune import init_network  # fine-tuning: the source's weights (and adapters)

            self.model = init_network(self.card, self.say).to(self.device)
        else:
            self.model = build_model(**self.card.build_kwargs()).to(self.device)
        if self.cfg.model.grad_checkpoint:  # config.validate checked that the network supports it
            self.model.grad_checkpoint = True
        self.ema = EMA(self.model, t.ema_decay, t.ema_warmup)
        self.net = distributed.wrap(self.model, world, self.device)  # the loss runs through it (DDP syncs)
        if world.rank:  # in-model randomness (dropout): a distinct stream on each rank
            torch.manual_seed(t.seed + 7919 * world.rank)
        self.objective = self.card.denoiser(self.net)  # the loss runs through `net` (DDP's wrapper, if any)
        self.batches = EpochBatches(len(self.train_set), t.batch_size, seed=t.seed)
        self.joint = None  # joint image-video training: rows of unrelated frames of the row's class
        if self.video and t.joint_images:
            self.joint = IndependentFrames(self.train_set.labels if self.num_classes else None, len(self.train_set),
                                           self.train_set.frames)
        self.total = t.max_steps or (t.epochs or 1) * self.batches.steps_per_epoch
        self.optimizer = build_optimizer(self.model, t)
        self.scheduler = build_scheduler(self.optimizer, t, self.total)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.gen = torch.Generator().manual_seed(t.seed + 1)
        self.rows = world.share(t.batch_size)  # this rank's rows of every global batch
        val = self.bundle.val
        most = VAL_MAX_CLIPS if self.video else VAL_MAX_IMAGES
        self.val_images = val.images[:most] if val is not None and len(val) else None
        self.val_labels = val.labels[:most] if self.val_images is not None and self.num_classes else None
        if self.text:
            self.encode_captions()
        self.embeddings = self.val_embeddings = None  # unCLIP's decoder: each image's CLIP image embedding
        if self.clip is not None:
            t0 = time.perf_counter()
            self.embeddings = self.clip.embed_images(self.train_set.images)
            if self.val_images is not None:
                self.val_embeddings = self.clip.embed_images(self.val_images)
            self.say(f"CLIP image embeddings ({self.embeddings.shape[1]}-d) of {len(self.embeddings)} images in "
                     f"{time.perf_counter() - t0:.1f} s (embedding dropout {self.cfg.model.label_dropout})")
        self.latents = self.val_latents = None
        if self.ae is not None:
            from difforge.train.latents import LatentSource

            cache = self.run_dir / "cache" if self.world.main else None
            keep = self.cfg.model.cache_latents
            self.latents = LatentSource(self.ae, self.ae_card, self.train_set.images, self.device, cache=keep,
                                        cache_dir=cache, name="train", log=self.say)
            if self.val_images is not None:
                self.val_latents = LatentSource(self.ae, self.ae_card, self.val_images, self.device, cache=keep,
                                                cache_dir=cache, name="val", log=self.say)

    # ------------------------------------------------------------------ checkpoints
    def newest_checkpoint(self) -> Path | None:
        """The newest checkpoint that verifies, as rank 0 sees it, on every rank."""
        found = None
        if self.world.main:
            found, problems = find_resumable(self.run_dir / "checkpoints")
            for p in problems:
                print(f"warning: skipping checkpoint: {p}")
        return distributed.broadcast(found, self.world)

    def load_weights_and_optimizer(self, ckpt: Path) -> dict:
        m_sd, e_sd, state = load_checkpoint(ckpt)
        if self.card.lora is not None:  # a LoRA run's checkpoints hold only the adapter
            from difforge.models.lora import load_adapter_state

            try:
                load_adapter_state(self.model, self.card.lora, m_sd)
                load_adapter_state(self.ema.shadow, self.card.lora, e_sd)
            except ValueError as e:
                raise CheckpointError(f"{ckpt}: {e}") from None
        else:
            self.model.load_state_dict(m_sd)
            self.ema.shadow.load_state_dict(e_sd)
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        return state

    def resume(self) -> None:
        """Continue from the newest verified checkpoint; a new run length re-lays the LR schedule."""
        ckpt = self.resume_from
        if ckpt is None:
            self.say(f"no checkpoint in {self.run_dir}; starting from step 0")
            return
        state = self.load_weights_and_optimizer(ckpt)
        self.gen.set_state(state["rng"]["train"])
        self.step = self.last_saved = int(state["step"])
        saved_total = state.get("total_steps") or state["scheduler"].get("total_steps") or self.total
        if self.step > self.total:
            raise ConfigError(f"{self.run_dir} is already at step {self.step}: a length of {self.total} steps "
                              f"would shorten it below that")
        if saved_total == self.total:
            self.scheduler.load_state_dict(state["scheduler"])
        else:  # extended (or shortened): the schedule is laid over the new length
            set_schedule_step(self.scheduler, self.step)
            self.say(f"run length changed from {saved_total} to {self.total} steps; learning-rate schedule laid "
                     f"over the new length")
        self.rollbacks, self.skipped = int(state.get("rollbacks", 0)), int(state.get("skipped", 0))
        restore_rng(state["rng"], self.world, self.device, self.cfg.train.seed, self.step)
        self.say(f"resuming {self.run_dir} from {ckpt.name} (step {self.step} of {self.total})")

    def checkpoint(self) -> Path:
        """Every rank calls this (their RNG streams are gathered); rank 0 writes."""
        world, step = self.world, self.step
        ranks = distributed.gather(rng_state(self.device), world)
        if world.distributed:  # weights and EMA must be identical on every rank
            digests = distributed.gather((distributed.digest(self.model), distributed.digest(self.ema.shadow)), world)
            if len(set(digests)) > 1:
                raise TrainingError(f"the ranks' weights or EMA differ at step {step} (digests {digests})")
        path = self.run_dir / "checkpoints" / f"step-{step}"
        if world.main:
            state = {
                "step": step,
                "ema": self.ema.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "rng": {"train": self.gen.get_state(), **ranks[0], "ranks": ranks},
                "rollbacks": self.rollbacks,
                "skipped": self.skipped,  # steps skipped for a non-finite loss or gradients, in all
                "world_size": world.size,
                "total_steps": self.total,  # the run's length when written (extension re-lays the LR schedule)
            }
            weights, ema = self.model.state_dict(), self.ema.shadow.state_dict()
            if self.card.lora is not None:  # only the adapter; the card names the base and its hash
                from difforge.models.lora import adapter_state

                spec = self.card.lora
                weights, ema = adapter_state(self.model, spec), adapter_state(self.ema.shadow, spec)
            path = save_checkpoint(self.run_dir / "checkpoints", step, weights, ema, state,
                                   keep=self.cfg.train.keep_checkpoints)
        distributed.barrier(world)
        self.last_saved = step
        return path

    def checkpoint_if_new(self) -> Path:
        if self.last_saved != self.step:
            return self.checkpoint()
        return self.run_dir / "checkpoints" / f"step-{self.step}"

    def encode_captions(self) -> None:
        """The training and validation captions as tables of encoded distinct captions."""
        from difforge.train.captions import CaptionTable

        cache = self.run_dir / "cache" if self.world.main else None
        spec = self.card.conditioning
        self.captions = CaptionTable(spec, self.train_set.captions, cache, self.say)
        if self.val_images is not None:
            self.val_captions = CaptionTable(spec, self.bundle.val.captions[:VAL_MAX_IMAGES], cache)
        self.say(f"captions: {self.captions.distinct} distinct of {len(self.captions)} "
                 f"({self.cfg.model.text_encoder} encoder, caption dropout {self.cfg.model.caption_dropout})")

    # ------------------------------------------------------------------ measuring and showing
    def preview(self, name: str, per_class: int = 1) -> None:
        """samples/NAME.png (EMA weights) and NAME-raw.png (raw weights, once they differ)."""
        if not self.world.main:
            return
        from difforge.train.preview import draw_previews

        nets = (("", self.ema.shadow),) if self.ema.step <= self.ema.warmup else (
            ("-raw", self.model), ("", self.ema.shadow))
        for tag, path in draw_previews(self, name, nets, per_class):
            self.logger.log_image(self.step, f"samples{tag}", path)

    @torch.no_grad()
    def validation_loss(self, net: torch.nn.Module) -> float:
        g = torch.Generator().manual_seed(12345)  # same t and noise every time: comparable
        was_training = net.training
        net.eval()
        total_loss, count = 0.0, 0
        chunk = 32 if self.video else 256
        for i in range(0, len(self.val_images), chunk):
            if self.val_latents is not None:
                x0 = self.val_latents.x0(torch.arange(i, min(i + chunk, len(self.val_images))), slice(None), g)
            else:
                x0 = to_model_input(self.val_images[i: i + chunk], self.image_size).to(self.device)
            cond = self.val_labels[i: i + chunk].to(self.device) if self.val_labels is not None else None
            if self.video:  # masks from the fixed generator: the same every time
                cond = self.card.conditioning.training_cond(cond, len(x0), 0.0, g).observe(x0)
            cond = self.val_captions.rows(slice(i, i + chunk)).to(self.device) if self.val_captions else cond
            cond = self.val_embeddings[i: i + chunk].to(self.device) if self.val_embeddings is not None else cond
            cond = self.cond_image(x0, cond) if self.cond_image is not None else cond
            loss = self.card.denoiser(net).loss(x0, cond, generator=g, autocast=self.amp_dtype)
            total_loss += loss.item() * len(x0)
            count += len(x0)
        net.train(was_training)
        return total_loss / count

    def validate(self) -> None:
        if self.val_images is None or not self.world.main:
            return
        self.logger.log(self.step, {"epoch": self.step / self.batches.steps_per_epoch,
                                    "val_loss": self.validation_loss(self.model),
                                    "val_loss_ema": self.validation_loss(self.ema.shadow)})

    def start_logging(self) -> None:
        from difforge.train.logging import (  # optional backends load lazily
            MetricsLogger,
            NullLogger,
        )

        t = self.cfg.train
        if self.world.main:
            self.logger = MetricsLogger(self.run_dir, config_to_dict(self.cfg), wandb=t.wandb,
                                        tensorboard=t.tensorboard)
        else:
            self.logger = NullLogger()
        self.in_training_eval = None  # FD/KID of the EMA weights every eval_every steps, on rank 0
        if t.eval_every and self.world.main:
            from difforge.eval.during_training import InTrainingEval

            self.in_training_eval = InTrainingEval(self.cfg.data, self.bundle, self.card, self.device,
                                                   n=t.eval_samples, seed=t.seed, log=self.say,
                                                   autoencoder=self.ae)

    # ------------------------------------------------------------------ one step
    def batch(self) -> tuple[torch.Tensor, torch.Tensor | None, int]:
        """This rank's rows of the step's global batch: x0, conditioning, global batch size.
        Label dropout, then (with data.hflip) the flips, are drawn for the global batch from
        the training generator, then sliced."""
        idx = self.batches.batch(self.step)  # the global batch: the same on every rank
        cond = None
        joint = None
        if self.video:  # labels dropped, then observed-frame masks, for the global batch; frames added below
            labels = self.train_set.labels[idx] if self.num_classes else None
            cond = self.card.conditioning.training_cond(labels, len(idx), self.cfg.model.label_dropout, self.gen)
            if self.joint is not None:  # the first rows (a random sample) become unrelated frames of their class
                k = round(self.cfg.train.joint_images * len(idx))
                joint = (torch.arange(len(idx)) < k, *self.joint.draw(labels, len(idx), self.gen))
                cond = FrameCond(cond.mask & ~joint[0][:, None], None, cond.labels, joint[0])
            cond = cond[self.rows].to(self.device)
        elif self.num_classes:  # labels dropped per sample of the global batch, then sliced
            labels = self.card.conditioning.drop(self.train_set.labels[idx], self.cfg.model.label_dropout, self.gen)
            cond = labels[self.rows].to(self.device)
        if self.captions is not None:  # captions dropped to the empty prompt, the same way
            texts = self.card.conditioning.drop(self.captions.rows(idx), self.cfg.model.caption_dropout, self.gen)
            cond = texts[self.rows].to(self.device)
        if self.embeddings is not None:  # CLIP image embeddings dropped to the null (zeros), the same way
            emb = self.card.conditioning.drop(self.embeddings[idx], self.cfg.model.label_dropout, self.gen)
            cond = emb[self.rows].to(self.device)
        if self.latents is not None:  # latent diffusion (no flips: config.validate refuses them)
            return self.latents.x0(idx, self.rows, self.gen), cond, len(idx)
        images = self.train_set.images[idx[self.rows]]
        if joint is not None:
            rows, clip, frame = (v[self.rows] for v in joint)
            images[rows] = IndependentFrames.gather(self.train_set.images, clip[rows], frame[rows])
        if self.cfg.data.hflip:  # at the native size, before any padding
            flip = (torch.rand(len(idx), generator=self.gen) < 0.5)[self.rows].view(-1, *(1,) * (images.ndim - 1))
            images = torch.where(flip, images.flip(-1), images)
        x0 = to_model_input(images, self.image_size).to(self.device)
        if self.video:
            cond = cond.observe(x0)
        if self.cond_image is not None:
            cond = self.cond_image(x0, cond)
        return x0, cond, len(idx)

    def apply_gradients(self, loss: torch.Tensor | None) -> bool:
        """Backward (unless accumulated already: `loss` None), clip and AdamW; False when the
        gradients are not finite (step skipped)."""
        t = self.cfg.train
        if loss is not None:
            self.scaler.scale(loss).backward()
        params = self.model.parameters
        if self.scaler.is_enabled():  # fp16: the scaler skips overflowing steps and lowers its scale
            if t.grad_clip > 0:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(params(), t.grad_clip)
            ok = True
        else:  # gradients are identical on every rank after DDP's all-reduce: so is this test
            if t.grad_clip > 0:
                norm = torch.nn.utils.clip_grad_norm_(params(), t.grad_clip)
            else:
                norm = torch.nn.utils.get_total_norm([p.grad for p in params() if p.grad is not None])
            ok = bool(torch.isfinite(norm))
        if ok:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        return ok

    def forward(self, x0: torch.Tensor, cond, n: int) -> tuple[torch.Tensor | None, bool, float]:
        """The step's loss: (what is left to backpropagate, finite, mean loss). With
        train.grad_accum > 1 the micro-batches are backpropagated here (train/accumulate.py)."""
        parts = self.cfg.train.grad_accum
        if parts == 1:
            loss = self.objective.loss(x0, cond, generator=self.gen, autocast=self.amp_dtype, rows=self.rows,
                                       global_batch=n)
            self.optimizer.zero_grad(set_to_none=True)
            return loss, bool(torch.isfinite(loss)), loss.item()
        self.optimizer.zero_grad(set_to_none=True)
        finite, value = accumulate_gradients(self.objective, self.scaler, x0, cond, parts=parts, generator=self.gen,
                                             autocast=self.amp_dtype, rows=self.rows, global_batch=n,
                                             no_sync=self.net.no_sync if self.world.distributed else None)
        return None, finite, value

    def train_step(self, stop: StopFlag) -> tuple[bool, float, bool, int]:
        """One optimisation step: (applied, mean loss, a rank was signalled, images)."""
        x0, cond, n = self.batch()
        loss, finite, loss_value = self.forward(x0, cond, n)
        signalled = stop.signum is not None
        if self.world.distributed:  # one collective: mean loss; any rank non-finite; any rank signalled
            flags = torch.tensor([loss_value if finite else 0.0, not finite, signalled], dtype=torch.float64)
            flags = distributed.sum_all(flags.to(self.device), self.world).tolist()
            loss_value, finite, signalled = flags[0] / self.world.size, flags[1] == 0, flags[2] > 0
        ok = self.apply_gradients(loss) if finite else False
        if ok:
            self.scheduler.step()
            self.ema.update(self.model)
            self.bad_in_a_row = 0
        else:
            self.skip_step("loss" if not finite else "gradients")
        self.step += 1
        return ok, loss_value, signalled, n

    def after_step(self) -> None:
        """What runs on a schedule after a step: validation, previews, evaluation, checkpoints."""
        t, step, total = self.cfg.train, self.step, self.total
        if step % self.batches.steps_per_epoch == 0:
            self.validate()
        if t.sample_every and step % t.sample_every == 0 and step < total:
            self.preview(f"step-{step:07d}")
        if self.in_training_eval is not None and (step % t.eval_every == 0 or step == total):
            self.logger.log(step, self.in_training_eval(self.ema.shadow))
        if t.checkpoint_every and step % t.checkpoint_every == 0 and step < total:
            self.checkpoint()

    # ------------------------------------------------------------------ the run
    def loop(self, stop: StopFlag, bar) -> bool:
        """Steps until the end (or `stop_after`); True when a signal stopped it."""
        t = self.cfg.train
        end = min(self.total, self.stop_after) if self.stop_after is not None else self.total
        t_last, imgs_since = time.perf_counter(), 0
        while self.step < end:
            ok, loss_value, signalled, n = self.train_step(stop)
            imgs_since += n if ok else 0
            bar.update(1)
            if self.bad_in_a_row >= MAX_BAD_STEPS:
                self.non_finite_streak()
            if ok and t.log_every and (self.step % t.log_every == 0 or self.step == self.total):
                now = time.perf_counter()
                ips = imgs_since / max(now - t_last, 1e-9)
                t_last, imgs_since = now, 0
                lr = self.scheduler.get_last_lr()[0]
                bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}", img_s=f"{ips:.0f}")
                self.logger.log(self.step, {"epoch": self.step / self.batches.steps_per_epoch, "loss": loss_value,
                                            "lr": lr, "img_per_s": ips})
            self.after_step()
            if signalled if self.world.distributed else stop.signum is not None:
                return True
        return False

    def finish(self) -> None:
        """The end of the run: last validation, checkpoint, final grid."""
        if self.step % self.batches.steps_per_epoch != 0:
            self.validate()
        path = self.checkpoint_if_new()
        if self.skipped:
            self.say(f"note: {self.skipped} of {self.step} steps were skipped for a non-finite loss or gradients "
                     f"({self.rollbacks} rollback(s)); see skipped_nonfinite in metrics.jsonl")
        if self.cfg.train.final_grid:
            self.say("drawing samples/final.png (10 per class, EMA weights)")
            self.preview("final", per_class=10)
        self.logger.log_artifact(path)

    def run(self, resume: bool) -> TrainResult:
        """Build, resume, train; a finished run that is resumed without a new length is left alone."""
        from tqdm.auto import tqdm

        from difforge.train.run_dir import create_run_dir

        self.resuming = resume
        self.resume_from = self.newest_checkpoint() if resume else None
        self.load_data()
        self.describe_model()
        if self.world.main:  # every check has passed: now the run directory is written
            create_run_dir(self.cfg, self.run_dir, resume, self.card, self.bundle.skipped, self.ae,
                           self.cfg.model.clip)
        self.build()
        if resume:
            self.resume()
            final = self.run_dir / "samples" / "final.png"
            if self.step >= self.total and (final.is_file() or not self.cfg.train.final_grid):
                self.say(f"{self.run_dir} is finished (step {self.step} of {self.total}); nothing to do. Pass "
                         f"--max-steps N to extend it.")
                return TrainResult(self.run_dir, self.step, False, self.world.rank)
        self.start_logging()
        bar = tqdm(total=self.total, initial=self.step, disable=not self.progress, desc="train", dynamic_ncols=True,
                   mininterval=1.0)
        self.model.train()
        try:
            with StopFlag() as stop:
                stopped = self.loop(stop, bar)
        except BaseException:
            bar.close()
            self.logger.close()
            raise
        bar.close()
        if self.step < self.total:  # preempted or asked to stop early: save where we are
            path = self.checkpoint_if_new()
            why = (f"signal {stop.signum}" if stop.signum else "a signal to another rank") if stopped \
                else f"stop_after={self.stop_after}"
            self.say(f"stopped at step {self.step} of {self.total} ({why}); checkpoint {path}; continue with --resume")
            self.logger.close()
            return TrainResult(self.run_dir, self.step, True, self.world.rank, signum=stop.signum if stopped else None)
        self.finish()
        self.logger.close()
        distributed.barrier(self.world)  # the other ranks wait for rank 0's final samples
        return TrainResult(self.run_dir, self.step, False, self.world.rank)
