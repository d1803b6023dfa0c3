"""`difforge train-autoencoder`: the first stage of latent diffusion (Rombach et al. 2022).

Trains a `KLAutoencoder` on a dataset with the loss of LDM's KL autoencoders without the
perceptual and adversarial terms: per image, the summed reconstruction error plus
`kl_weight` times the KL divergence of the posterior from N(0, I) (LDM: 1e-6), divided by
the number of pixel values (the ratio of the two terms is LDM's). The error is squared
(`loss="l2"`, the default) or absolute (`"l1"`, LDM's pixel term): in a short CPU training
L2 reached the higher PSNR (benchmarks/autoencoder.md). Then it measures:

- the latent scale, 1 / std of posterior samples of up to `SCALE_IMAGES` training images
  (under torchrun each rank measures its share and the sums are added, so every rank gets
  the same scale);
- reconstruction PSNR on held-out images (from the posterior mean, in uint8 pixels) and,
  unless `fd=False`, the Frechet distance between reconstructions and the originals in the
  dataset's domain-classifier features (the project's FD for small images; the classifier
  is trained and cached on first use).

Ctrl-C or SIGTERM stops after the current step and still measures and writes the
autoencoder (its card records the step it reached).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from difforge.config import DataConfig
from difforge.data import load_dataset, to_model_input
from difforge.data.batches import EpochBatches
from difforge.io.space import from_model_output
from difforge.models.autoencoder import (
    AutoencoderCard,
    KLAutoencoder,
    is_autoencoder_dir,
    kl_to_standard_normal,
    posterior_sample,
    save_autoencoder,
)
from difforge.train import distributed
from difforge.train.signals import StopFlag

SCALE_IMAGES = 10_000  # training images the latent scale is measured on
EVAL_IMAGES = 2_000  # held-out images PSNR and FD are measured on
FACTORS = {1: (1,), 2: (1, 2), 4: (1, 2, 2), 8: (1, 2, 2, 4)}  # downsampling factor -> channel_mults
LOSSES = {"l2": lambda d: d.pow(2), "l1": lambda d: d.abs()}  # reconstruction error per pixel value


@dataclass(frozen=True)
class AutoencoderConfig:
    data: DataConfig = field(default_factory=lambda: DataConfig(dataset="fashion-colour"))
    factor: int = 2  # f: the latent is (S/f) x (S/f)
    latent_channels: int = 4
    base_channels: int = 16
    num_res_blocks: int = 1
    steps: int = 800
    batch_size: int = 64
    lr: float = 3e-3
    kl_weight: float = 1e-6  # LDM's
    loss: str = "l2"  # l2 | l1: the reconstruction error
    seed: int = 0
    fd: bool = True

    def check(self) -> None:
        if self.factor not in FACTORS:
            raise ValueError(f"factor must be one of {sorted(FACTORS)}, got {self.factor}")
        for name in ("latent_channels", "base_channels", "steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.loss not in LOSSES:
            raise ValueError(f"unknown reconstruction loss {self.loss!r}; expected one of {list(LOSSES)}")
        if not self.lr > 0 or not self.kl_weight >= 0:
            raise ValueError(f"lr must be > 0 and kl_weight >= 0, got {self.lr} and {self.kl_weight}")


def reconstruction_loss(ae: torch.nn.Module, x: torch.Tensor, kl_weight: float,
                        generator: torch.Generator | None = None, loss: str = "l2"
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, mean reconstruction error per pixel value, mean KL per image) of a batch in
    model space; `ae` is a `KLAutoencoder` or its DDP wrapper."""
    recon, mean, logvar = ae(x, generator)
    err = LOSSES[loss](recon - x).flatten(1).sum(1)
    kl = kl_to_standard_normal(mean, logvar)
    total = ((err + kl_weight * kl) / x[0].numel()).mean()
    return total, err.mean() / x[0].numel(), kl.mean()


@torch.no_grad()
def latent_scale(ae: KLAutoencoder, images: torch.Tensor, image_size: int, world: distributed.World,
                 *, seed: int = 0, batch_size: int = 256, device: torch.device | str = "cpu") -> float:
    """1 / std of posterior samples z of uint8 `images`, every element of every z counted.

    Batch b of `images` (in order, `batch_size` each) draws its noise from seed + b and is
    measured by rank b % world size; the float64 sums are added over ranks. So any number of
    processes gets the same scale, the one a single process gets."""
    sums = torch.zeros(3, dtype=torch.float64)  # count, sum z, sum z^2
    for b, s in enumerate(range(0, len(images), batch_size)):
        if b % world.size != world.rank:
            continue
        x = to_model_input(images[s: s + batch_size], image_size).to(device)
        z = posterior_sample(*ae.encode(x), torch.Generator().manual_seed(seed + b)).double().cpu()
        sums += torch.stack([torch.tensor(float(z.numel()), dtype=torch.float64), z.sum(), z.pow(2).sum()])
    n, s1, s2 = distributed.sum_all(sums.to(device), world).cpu().tolist()
    var = s2 / n - (s1 / n) ** 2
    if not var > 0:
        raise ValueError("the autoencoder's latents have no variance: it did not train")
    return 1.0 / math.sqrt(var)


@torch.no_grad()
def reconstruct(ae: KLAutoencoder, images: torch.Tensor, image_size: int, *, batch_size: int = 256,
                device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 images -> uint8 reconstructions from the posterior means (the same size)."""
    out = []
    for s in range(0, len(images), batch_size):
        x = to_model_input(images[s: s + batch_size], image_size).to(device)
        out.append(from_model_output(ae.decode(ae.encode(x)[0]).clamp(-1, 1).cpu(), images.shape[-1]))
    return torch.cat(out)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Peak signal-to-noise ratio of two uint8 batches, from the mean squared error over all values."""
    mse = (a.double() - b.double()).pow(2).mean().item()
    return float("inf") if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def train_autoencoder(cfg: AutoencoderConfig, out: str | Path, *, device: str = "auto", progress: bool = True,
                      log: Callable[[str], None] = print, overwrite: bool = False) -> AutoencoderCard:
    """Train, measure and write the autoencoder into `out` (new or empty); returns its card.
    Under torchrun every process calls this with the same arguments (data parallel; rank 0
    writes)."""
    from difforge.runtime import resolve_device

    cfg.check()
    world = distributed.world_from_env()
    dev = distributed.check_world(world, resolve_device(device), cfg.batch_size)
    created = distributed.init(world, dev)
    try:
        return _train(cfg, Path(out), dev, progress, log, world, overwrite)
    finally:
        distributed.shutdown(created)


def _train(cfg: AutoencoderConfig, out: Path, device: torch.device, progress: bool, log: Callable[[str], None],
           world: distributed.World, overwrite: bool) -> AutoencoderCard:
    from tqdm.auto import tqdm

    from difforge.io.outputs import check_output_dir

    say = log if world.main else (lambda *a, **k: None)
    if world.main:
        check_output_dir(out, holds="trained autoencoder", is_ours=is_autoencoder_dir, overwrite=overwrite)
    bundle = load_dataset(cfg.data)
    train = bundle.train
    native = bundle.native_size
    image_size = math.ceil(native / cfg.factor) * cfg.factor
    batch = min(cfg.batch_size, len(train) - len(train) % world.size)
    if batch < world.size:
        raise ValueError(f"the training set has {len(train)} images, fewer than the {world.size} processes")
    torch.manual_seed(cfg.seed)
    kwargs = dict(channels=train.channels, latent_channels=cfg.latent_channels, base_channels=cfg.base_channels,
                  channel_mults=FACTORS[cfg.factor], num_res_blocks=cfg.num_res_blocks)
    ae = KLAutoencoder(**kwargs).to(device)
    net = distributed.wrap(ae, world, device)
    opt = torch.optim.AdamW(ae.parameters(), lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.1)
    batches = EpochBatches(len(train), batch, seed=cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed + 1 + 7919 * world.rank)  # posterior noise: a stream per rank
    rows = world.share(batch)
    say(f"autoencoder: f={cfg.factor}, {cfg.latent_channels} latent channels ({image_size}x{image_size} -> "
        f"{image_size // cfg.factor}x{image_size // cfg.factor}), "
        f"{sum(p.numel() for p in ae.parameters()) / 1e6:.2f}M parameters, {len(train)} training images")
    step, t0 = 0, time.perf_counter()
    bar = tqdm(total=cfg.steps, desc="train-autoencoder", disable=not (progress and world.main), dynamic_ncols=True,
               mininterval=1.0)
    ae.train()
    with StopFlag() as stop:
        while step < cfg.steps:
            idx = batches.batch(step)[rows]
            x = to_model_input(train.images[idx], image_size).to(device)
            loss, err, kl = reconstruction_loss(net, x, cfg.kl_weight, gen, cfg.loss)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            bar.update(1)
            if step % 20 == 0 or step == cfg.steps:
                bar.set_postfix({cfg.loss: f"{err.item():.4f}", "kl": f"{kl.item():.1f}"})
            stopped = stop.signum is not None
            if world.distributed:
                stopped = distributed.sum_all(torch.tensor([float(stopped)], dtype=torch.float64).to(device),
                                              world).item() > 0
            if stopped:
                say(f"stopped at step {step} of {cfg.steps}: measuring and writing the autoencoder as it is")
                break
    bar.close()
    seconds = time.perf_counter() - t0
    ae.eval()
    scale = latent_scale(ae, train.images[:SCALE_IMAGES], image_size, world, seed=cfg.seed, device=device)
    metrics: dict = {"train_seconds": round(seconds, 1), "images_per_s": round(step * batch / max(seconds, 1e-9), 1)}
    if world.main:
        held = bundle.val if bundle.val is not None and len(bundle.val) else bundle.test
        held = held if held is not None and len(held) else train
        real = held.images[:EVAL_IMAGES]
        rec = reconstruct(ae, real, image_size, device=device)
        metrics["psnr"] = round(psnr(real, rec), 2)
        metrics["eval_images"] = len(real)
        if cfg.fd:
            metrics["fd"] = round(_reconstruction_fd(cfg.data, bundle, real, rec, device, say), 3)
    training = {k: getattr(cfg, k) for k in ("steps", "batch_size", "lr", "kl_weight", "loss", "seed")}
    card = AutoencoderCard(kwargs, scale, image_size, native, dataset=cfg.data.dataset, step=step, metrics=metrics,
                           training={**training, "processes": world.size})
    if world.main:
        save_autoencoder(ae, card, out)
        fd = f", FD {metrics['fd']:.3f}" if "fd" in metrics else ""
        say(f"wrote {out}: step {step}, latent scale {scale:.4f}, reconstruction PSNR {metrics['psnr']:.2f} dB on "
            f"{metrics['eval_images']} held-out images{fd}")
    distributed.barrier(world)
    return card


def _reconstruction_fd(data: DataConfig, bundle, real: torch.Tensor, rec: torch.Tensor, device, say) -> float:
    from difforge.eval.classifier import load_or_train_classifier
    from difforge.eval.metrics import frechet_distance_features

    clf = load_or_train_classifier(data, bundle=bundle, device=device, log=say)
    return frechet_distance_features(clf.features(real), clf.features(rec))
