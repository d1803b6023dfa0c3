"""The domain CLIP: training a `difforge.models.clip.CLIPModel` on a captioned dataset,
its held-out retrieval accuracy, and the CLIP score of image-caption pairs.

The CLIP score of N (image, caption) pairs is

    CLIPScore = (1 / N) * sum_i 100 * max(cos(E_I(image_i), E_T(caption_i)), 0)

with E_I, E_T the model's image and text embeddings: the CLIP-S of Hessel et al. (2021,
"CLIPScore: a reference-free evaluation metric for image captioning"), w * max(cos, 0),
with w = 100 in place of their 2.5, so that it reads as a percentage (0: unrelated or
opposed, 100: identical directions). It is only comparable between scores of the same
CLIP model.

A trained model is a folder with `model.safetensors` (the towers and the logit scale;
not the frozen MiniLM, which comes from the `text` extra) and `clip.json` (its
architecture, how it was trained, and its held-out figures); `DomainCLIP` and the
functions that read and write such a folder live in `difforge.models.clip`, below the
pipeline, which loads the CLIP an unCLIP decoder carries.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from difforge.config import DataConfig
from difforge.data import DatasetBundle, ImageDataset, to_model_input
from difforge.models.clip import (  # noqa: F401 - the loaded model and its files, re-exported
    FORMAT,
    META,
    WEIGHTS,
    CLIPArch,
    CLIPModel,
    DomainCLIP,
    check_clip_dir,
    clip_conditioner,
    clip_loss,
    is_clip_dir,
    load_clip,
)
from difforge.models.text import TextCond

SCORE_SCALE = 100.0  # w of w * max(cos, 0)


@dataclass(frozen=True)
class CLIPConfig:
    """Architecture and training of a domain CLIP."""

    text_encoder: str = "scratch"  # scratch | minilm (frozen, `pip install 'difforge[text]'`)
    embed_dim: int = 64
    widths: tuple[int, ...] = (16, 32, 64, 128)
    max_tokens: int = 64  # prompt limit; longer training captions are cut
    steps: int = 600
    batch_size: int = 128
    lr: float = 2e-3  # peak; linear warm-up over 5% of the steps, then cosine to 0
    weight_decay: float = 0.05  # on matrices and convolution kernels only
    seed: int = 0
    eval_images: int = 2000  # held-out pairs the retrieval accuracy and the scores are measured on


# ---------------------------------------------------------------- the CLIP score


def clip_scores(clip: DomainCLIP, images: torch.Tensor, prompts: Sequence[str]) -> np.ndarray:
    """100 * max(cos(image_i, prompt_i), 0) for each pair: float64 (N,)."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if len(prompts) != len(images):
        raise ValueError(f"{len(images)} images and {len(prompts)} prompts: give one prompt per image")
    cos = (clip.embed_images(images).double() * clip.embed_texts(prompts).double()).sum(1)
    return (SCORE_SCALE * cos.clamp(min=0)).numpy()


def clip_score(clip: DomainCLIP, images: torch.Tensor, prompts: Sequence[str]) -> float:
    """The CLIP score of (image, prompt) pairs (see the module doc): the mean of
    `clip_scores`, e.g. of generated images and the prompts they were generated from."""
    scores = clip_scores(clip, images, prompts)
    if len(scores) == 0:
        raise ValueError("no images to score")
    return float(scores.mean())


def dataset_clip_score(clip: DomainCLIP, ds: ImageDataset, n: int | None = None, seed: int = 0) -> dict:
    """The CLIP score of a captioned set's own pairs ("matched") next to its floor, the
    same images with the captions shuffled ("shuffled": a seeded permutation, so a few
    images may draw a caption equal to their own), on n pairs drawn with `seed` (all when
    n is None or larger)."""
    if ds.captions is None:
        raise ValueError(f"dataset {ds.name!r} has no captions: the CLIP score needs captioned images")
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(ds), generator=g)[: n if n is not None else len(ds)]
    if len(pick) == 0:
        raise ValueError(f"dataset {ds.name!r} has no images to score")
    images, captions = ds.images[pick], [ds.captions[i] for i in pick.tolist()]
    shuffled = [captions[i] for i in torch.randperm(len(captions), generator=g).tolist()]
    img = clip.embed_images(images).double()
    txt = {c: e for c, e in zip(dict.fromkeys(captions), clip.embed_texts(list(dict.fromkeys(captions))).double())}
    score = lambda caps: float((SCORE_SCALE * (img * torch.stack([txt[c] for c in caps])).sum(1).clamp(min=0))  # noqa: E731
                               .mean())
    return {"matched": score(captions), "shuffled": score(shuffled), "n": len(pick)}


# ---------------------------------------------------------------- retrieval


def retrieval_accuracy(clip: DomainCLIP, ds: ImageDataset, batch_size: int) -> dict:
    """Top-1 retrieval on captioned pairs, counted right when the retrieved caption (or the
    retrieved image's caption) is the query's caption string:

    - `batch_image_to_text`, `batch_text_to_image`: within consecutive batches of
      `batch_size` pairs (the last partial batch dropped; all pairs in one batch when
      there are fewer), as the training loss sees them; `batch_chance`: what a random
      choice would get;
    - `caption_image_to_text`: each image against every distinct caption of `ds`;
      `caption_chance` = 1 / their number. On a set whose captions phrase the same
      content several ways (fashion-colour's four templates), a paraphrase counts as wrong.
    """
    if ds.captions is None or len(ds) == 0:
        raise ValueError("retrieval needs captioned images")
    img = clip.embed_images(ds.images)
    unique = list(dict.fromkeys(ds.captions))
    position = {c: i for i, c in enumerate(unique)}
    cap = torch.tensor([position[c] for c in ds.captions])
    txt_unique = clip.embed_texts(unique)
    txt = txt_unique[cap]
    b = min(batch_size, len(ds))
    i2t = t2i = chance = 0.0
    batches = len(ds) // b
    for k in range(batches):
        sl = slice(k * b, (k + 1) * b)
        sim, c = img[sl] @ txt[sl].T, cap[sl]
        same = c[:, None] == c[None, :]
        i2t += float((c[sim.argmax(1)] == c).float().mean())
        t2i += float((c[sim.argmax(0)] == c).float().mean())
        chance += float(same.float().mean())
    caption_i2t = float(((img @ txt_unique.T).argmax(1) == cap).float().mean())
    return {"batch_image_to_text": i2t / batches, "batch_text_to_image": t2i / batches,
            "batch_chance": chance / batches, "batch_size": b, "caption_image_to_text": caption_i2t,
            "caption_chance": 1 / len(unique), "captions": len(unique), "pairs": len(ds)}


def summary_line(meta: dict) -> str:
    """A trained CLIP model's held-out figures in one line."""
    r, s = meta["retrieval"], meta["clip_score"]
    return (f"held-out {meta['eval_split']} ({r['pairs']} pairs): image->text top-1 {r['batch_image_to_text']:.1%} "
            f"in batches of {r['batch_size']} (chance {r['batch_chance']:.1%}), "
            f"{r['caption_image_to_text']:.1%} among {r['captions']} captions; CLIP score {s['matched']:.2f} "
            f"(shuffled captions {s['shuffled']:.2f}); {meta['steps']} steps in {meta['train_seconds']:g} s")


# ---------------------------------------------------------------- training


def _held_out(bundle: DatasetBundle) -> tuple[ImageDataset, str]:
    for split in ("test", "val"):
        ds = getattr(bundle, split)
        if ds is not None and len(ds) and ds.captions is not None:
            return ds, split
    raise ValueError("the dataset has no captioned test or validation split to measure the CLIP model on "
                     "(a folder needs a validation fraction above 0)")


def _schedule(step: int, steps: int) -> float:
    """Linear warm-up over 5% of the steps (at least 1), then a cosine decay to 0."""
    warm = max(1, round(0.05 * steps))
    if step < warm:
        return (step + 1) / warm
    return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, steps - warm)))


def _text_table(arch: CLIPArch, captions: list[str], device: torch.device, log) -> tuple:
    """(encode, index): the distinct captions prepared once, and each caption's row.
    `encode(rows)` gives the text features of those distinct captions: the scratch encoder
    on their token ids (trained), or the frozen MiniLM's pooled embeddings computed here."""
    position = {c: i for i, c in enumerate(dict.fromkeys(captions))}
    unique = list(position)
    index = torch.tensor([position[c] for c in captions], dtype=torch.long)
    conditioner = clip_conditioner(arch, truncate=True)
    if arch.text_encoder == "scratch":
        ids, mask = conditioner.tokenizer(unique)
        ids, mask = ids.to(device), mask.to(device)

        def encode(net: CLIPModel, rows: torch.Tensor) -> torch.Tensor:
            m = mask[rows]
            length = int(m.sum(1).max())
            return net.text_features(TextCond(mask=m[:, :length], ids=ids[rows, :length]))

        return encode, index
    if log:
        log(f"encoding {len(unique)} distinct captions with the frozen MiniLM")
    pooled = torch.cat([conditioner.encode(unique[s : s + 256]).pooled for s in range(0, len(unique), 256)])
    pooled = pooled.to(device)
    return (lambda net, rows: pooled[rows]), index


def train_clip(
    bundle: DatasetBundle,
    cfg: CLIPConfig = CLIPConfig(),
    *,
    dataset_key: str = "",
    data: DataConfig | None = None,
    device: torch.device | str = "cpu",
    log: Callable[[str], None] | None = None,
) -> DomainCLIP:
    """Train on the bundle's captioned train split with the symmetric InfoNCE loss (two
    copies of one caption in a batch are both positives); measure retrieval accuracy and
    the CLIP score on up to `cfg.eval_images` pairs of its test split (else val)."""
    train = bundle.train
    if train.captions is None:
        raise ValueError("the dataset has no captions: a CLIP model needs captioned images (fashion-colour, or a "
                         "folder with metadata.jsonl or .txt captions)")
    held_out, split = _held_out(bundle)
    if cfg.steps < 1 or cfg.batch_size < 2:
        raise ValueError(f"steps must be >= 1 and batch_size >= 2, got {cfg.steps}, {cfg.batch_size}")
    if len(train) < 2:
        raise ValueError(f"the training split has {len(train)} image(s): contrastive training needs at least 2")
    if len(train) < cfg.batch_size:
        if log:
            log(f"note: the training set has {len(train)} images, fewer than the batch size {cfg.batch_size}: "
                f"training with batches of {len(train)}")
        cfg = dataclasses.replace(cfg, batch_size=len(train))
    device = torch.device(device)
    arch = CLIPArch(channels=train.channels, embed_dim=cfg.embed_dim, widths=cfg.widths,
                    text_encoder=cfg.text_encoder, max_tokens=cfg.max_tokens)
    encode, caption_index = _text_table(arch, train.captions, device, log)
    g = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)  # parameter initialisation
    net = CLIPModel(arch).to(device)
    decay = [p for n, p in net.named_parameters() if p.ndim >= 2 and "position" not in n and "token" not in n]
    rest = [p for n, p in net.named_parameters() if not any(p is q for q in decay)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": rest, "weight_decay": 0.0}], lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _schedule(s, cfg.steps))
    images, caption_index = train.images.to(device), caption_index.to(device)
    per_epoch = len(train) // cfg.batch_size
    report_every = max(1, cfg.steps // 10)
    start = time.perf_counter()
    net.train()
    total, perm = 0.0, None
    for step in range(cfg.steps):
        if step % per_epoch == 0:
            perm = torch.randperm(len(train), generator=g).to(device)
        k = step % per_epoch
        idx = perm[k * cfg.batch_size : (k + 1) * cfg.batch_size]
        rows = caption_index[idx]
        image_emb = net.embed_images(to_model_input(images[idx], train.size))
        text_emb = net.project_text(encode(net, rows))
        loss = clip_loss(image_emb, text_emb, net.logit_scale, positives=rows[:, None] == rows[None, :])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():  # CLIP clamps the parameter itself, so its gradient never dies at the bound
            net.log_logit_scale.clamp_(0.0, math.log(100.0))
        total += loss.detach().item()
        if log and ((step + 1) % report_every == 0 or step + 1 == cfg.steps):
            n = (step % report_every) + 1
            log(f"clip step {step + 1}/{cfg.steps}: loss {total / n:.4f}, logit scale "
                f"{net.logit_scale.item():.1f}")
            total = 0.0
    seconds = time.perf_counter() - start
    meta = {
        "format": FORMAT,
        "version": 1,
        "arch": arch.to_dict(),
        "dataset": dataset_key or train.name,
        "data": dataclasses.asdict(data) if data is not None else None,
        "image_size": train.size,
        "steps": cfg.steps,
        "batch_size": cfg.batch_size,
        "lr": cfg.lr,
        "weight_decay": cfg.weight_decay,
        "seed": cfg.seed,
        "train_images": len(train),
        "train_captions": int(caption_index.max()) + 1,
        "train_seconds": round(seconds, 1),
        "logit_scale": net.logit_scale.item(),
        "eval_split": split,
    }
    clip = DomainCLIP(net, meta, device)
    pick = torch.randperm(len(held_out), generator=torch.Generator().manual_seed(cfg.seed))[: cfg.eval_images]
    sub = held_out.subset(pick.sort().values)
    meta["retrieval"] = retrieval_accuracy(clip, sub, cfg.batch_size)
    meta["clip_score"] = dataset_clip_score(clip, sub, seed=cfg.seed)
    return clip
