"""Training unCLIP's diffusion prior (`difforge.models.prior`) on a captioned dataset: the
domain CLIP embeds every training image and every distinct caption once, then the prior
learns p(image embedding | text embedding) with the denoising loss of its noise process,
the text embedding dropped to the null (zeros) for a fraction of rows (classifier-free
guidance, as the paper's prior drops its text conditioning 10% of the time)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from difforge.data import DatasetBundle
from difforge.diffusion.frameworks import FrameworkSpec
from difforge.models.clip import clip_conditioner, load_clip
from difforge.models.prior import PriorCard, PriorNet, clip_fingerprint


@dataclass(frozen=True)
class PriorConfig:
    width: int = 256
    depth: int = 4
    steps: int = 2000
    batch_size: int = 256
    lr: float = 1e-3  # AdamW, cosine decay to 0
    text_dropout: float = 0.1
    timesteps: int = 1000  # DDPM, cosine schedule, x0 prediction
    seed: int = 0


def clip_embeddings(clip, images: torch.Tensor, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(image embeddings (N, D), text embeddings (N, D)) of a captioned split; each distinct
    caption is embedded once (cut to the CLIP's token limit, as its training cut them)."""
    first: dict[str, int] = {}
    index = torch.tensor([first.setdefault(c, len(first)) for c in captions], dtype=torch.long)
    conditioner = clip_conditioner(clip.net.arch, truncate=True)
    distinct = list(first)
    with torch.no_grad():
        text = torch.cat([clip.net.embed_text(conditioner(distinct[s : s + 500], device=clip.device)).float().cpu()
                          for s in range(0, len(distinct), 500)])
    return clip.embed_images(images), text[index]


def train_prior(bundle: DatasetBundle, clip_dir: str | Path, cfg: PriorConfig = PriorConfig(), *,
                device: torch.device | str = "cpu", log: Callable[[str], None] | None = None
                ) -> tuple[PriorCard, PriorNet]:
    """Train a prior from the CLIP in `clip_dir` to the bundle's training images."""
    train = bundle.train
    if train.captions is None:
        raise ValueError("the dataset has no captions: a prior learns image embeddings from caption embeddings")
    if cfg.steps < 1 or cfg.batch_size < 1 or not 0 <= cfg.text_dropout < 1:
        raise ValueError(f"steps and batch size must be >= 1 and text dropout in [0, 1), got {cfg.steps}, "
                         f"{cfg.batch_size}, {cfg.text_dropout}")
    device = torch.device(device)
    clip = load_clip(clip_dir, device)
    c, s = clip.net.arch.channels, clip.image_size
    if (c, s) != (train.channels, train.size):
        raise ValueError(f"the CLIP model takes {c}-channel {s}x{s} images; this data is {train.channels}-channel "
                         f"{train.size}x{train.size}")
    t0 = time.perf_counter()
    image_emb, text_emb = clip_embeddings(clip, train.images, train.captions)
    if log:
        log(f"CLIP embeddings of {len(train)} images and their captions in {time.perf_counter() - t0:.1f} s")
    dim = image_emb.shape[1]
    card = PriorCard(dim, cfg.width, cfg.depth, FrameworkSpec(timesteps=cfg.timesteps, schedule="cosine"), "x0",
                     clip_fingerprint(clip_dir), cfg.text_dropout)
    torch.manual_seed(cfg.seed)
    net = card.build_network().to(device)
    model = card.denoiser(net)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.steps)
    g = torch.Generator().manual_seed(cfg.seed)
    x_all = (image_emb * card.scale).to(device)
    batch = min(cfg.batch_size, len(train))
    report_every, total, start = max(1, cfg.steps // 10), 0.0, time.perf_counter()
    net.train()
    for step in range(cfg.steps):
        idx = torch.randint(len(train), (batch,), generator=g)
        keep = (torch.rand(batch, generator=g) >= cfg.text_dropout)[:, None]
        text = torch.where(keep, text_emb[idx], torch.zeros(1, dim)).to(device)
        loss = model.loss(x_all[idx.to(device)], text, generator=g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        total += loss.item()
        if log and ((step + 1) % report_every == 0 or step + 1 == cfg.steps):
            log(f"prior step {step + 1}/{cfg.steps}: loss {total / ((step % report_every) + 1):.4f}")
            total = 0.0
    net.eval()
    training = {**dataclasses.asdict(cfg), "train_images": len(train),
                "seconds": round(time.perf_counter() - start, 1)}
    return dataclasses.replace(card, training=training), net
