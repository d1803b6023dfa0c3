"""A small video classifier whose penultimate features are the space of the domain video
Frechet distance (a stand-in for FVD, whose I3D network is neither at hand offline nor
sized for 32 x 32 clips).

Three 3-D conv blocks (3x3x3 conv, batch norm, ReLU; the first halves space, the others
halve time and space), average pooling to 2x2x2, a ReLU layer of `feature_dim` (the
features) and two heads: the clip's class and, on data whose trajectories are known (the
built-in moving-fashion-mnist), the first garment's first step on each axis (-2..2 pixels,
five classes per axis), so the features have to see motion as well as garments. Trained on
the training clips, measured on the test clips (in the report), and cached as `model.safetensors` +
`video_classifier.json` in `$DIFFORGE_CACHE/classifiers/<dataset-key>-video/`. The defaults
take about a minute of one CPU core.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

FORMAT = "difforge-video-classifier"
WEIGHTS, META = "model.safetensors", "video_classifier.json"
MAX_STEP = 2  # first steps of -MAX_STEP..MAX_STEP pixels per axis: 2 * MAX_STEP + 1 classes


@dataclass(frozen=True)
class VideoClassifierConfig:
    widths: tuple[int, int, int] = (8, 16, 32)
    feature_dim: int = 64
    steps: int = 1200  # about a minute of one CPU core
    batch_size: int = 32
    lr: float = 4e-3  # peak of the one-cycle schedule
    weight_decay: float = 1e-4
    seed: int = 0


def _block(cin: int, cout: int, stride) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm3d(cout),
                         nn.ReLU())


class VideoCNN(nn.Module):
    """Clips (B, C, T, H, W) in [-1, 1] -> features (B, feature_dim); heads: class logits and
    the first step's logits (B, 2, 2 * MAX_STEP + 1)."""

    def __init__(self, in_channels: int, num_classes: int, widths=(8, 16, 32), feature_dim: int = 64):
        super().__init__()
        w1, w2, w3 = widths
        self.body = nn.Sequential(
            _block(in_channels, w1, (1, 2, 2)), _block(w1, w2, 2), _block(w2, w3, 2),
            nn.AdaptiveAvgPool3d(2), nn.Flatten(), nn.Linear(w3 * 8, feature_dim), nn.ReLU(),
        )
        self.head = nn.Linear(feature_dim, num_classes)
        self.motion = nn.Linear(feature_dim, 2 * (2 * MAX_STEP + 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.body(x)
        return h, self.head(h), self.motion(h).view(len(x), 2, 2 * MAX_STEP + 1)


def _model_input(clips: torch.Tensor) -> torch.Tensor:
    return clips.float() / 127.5 - 1


def first_steps(trajectories: torch.Tensor) -> torch.Tensor:
    """(N, 2) long classes 0..2 MAX_STEP of the first object's first step (row, column),
    clamped to +-MAX_STEP: the target of the motion head."""
    step = trajectories[:, 0, 1] - trajectories[:, 0, 0]
    return (step.round().clamp(-MAX_STEP, MAX_STEP) + MAX_STEP).long()


class VideoClassifier:
    """A trained VideoCNN with its description (`meta`): features and class logits of uint8 clips."""

    def __init__(self, net: VideoCNN, meta: dict, device: torch.device | str = "cpu"):
        self.net, self.meta = net.to(device).eval(), meta
        self.device = torch.device(device)

    @property
    def class_names(self) -> list[str]:
        return self.meta["class_names"]

    def check(self, clips: torch.Tensor, what: str = "clips") -> None:
        c, t, s = self.meta["channels"], self.meta["frames"], self.meta["image_size"]
        if clips.dtype != torch.uint8 or clips.ndim != 5 or tuple(clips.shape[1:]) != (c, t, s, s):
            raise ValueError(f"the video classifier takes uint8 clips (N, {c}, {t}, {s}, {s}); got {what} "
                             f"{clips.dtype} {tuple(clips.shape)}")

    @torch.no_grad()
    def features_and_logits(self, clips: torch.Tensor, batch_size: int = 100) -> tuple[np.ndarray, np.ndarray]:
        """Penultimate features (N, D) (scaled as `meta["feature_scale"]` says) and class logits (N, K), float64."""
        self.check(clips)
        feats, logits = [], []
        for s in range(0, len(clips), batch_size):
            h, z, _ = self.net(_model_input(clips[s : s + batch_size].to(self.device)))
            feats.append(h.double().cpu() * self.meta.get("feature_scale", 1.0))
            logits.append(z.double().cpu())
        return torch.cat(feats).numpy(), torch.cat(logits).numpy()

    def save(self, directory: str | Path) -> Path:
        from difforge.io.outputs import save_weights_and_meta

        return save_weights_and_meta(directory, self.net, self.meta, WEIGHTS, META)


def is_video_classifier_dir(directory: str | Path) -> bool:
    return (Path(directory) / META).is_file()


def load_video_classifier(directory: str | Path, device: torch.device | str = "cpu") -> VideoClassifier:
    """Load what `VideoClassifier.save` wrote; ValueError when unusable."""
    import json

    from safetensors.torch import load_file

    directory = Path(directory)
    if not (directory / META).is_file() or not (directory / WEIGHTS).is_file():
        raise FileNotFoundError(f"no video classifier in {directory} (expected {WEIGHTS} and {META})")
    try:
        meta = json.loads((directory / META).read_text())
        if meta.get("format") != FORMAT:
            raise ValueError("not a difforge video classifier description")
        net = VideoCNN(meta["channels"], len(meta["class_names"]), tuple(meta["widths"]), meta["feature_dim"])
        net.load_state_dict(load_file(directory / WEIGHTS))
    except (ValueError, KeyError, TypeError, RuntimeError, OSError) as e:
        raise ValueError(f"cannot load video classifier {directory}: {str(e).splitlines()[0]}") from None
    return VideoClassifier(net, meta, device)


def train_video_classifier(bundle, cfg: VideoClassifierConfig = VideoClassifierConfig(), *, dataset_key: str = "",
                           device: torch.device | str = "cpu", log: Callable[[str], None] | None = None
                           ) -> VideoClassifier:
    """Train on the bundle's training clips (`cfg.steps` batches, each epoch in a fresh random
    order), measure class and first-step accuracy on its test clips (else
    validation clips)."""
    train = bundle.train
    held_out, split = (bundle.test, "test") if bundle.test is not None else (bundle.val, "val")
    if train.labels is None:
        raise ValueError("the clips have no labels: the video classifier needs classes")
    if held_out is None or len(held_out) == 0:
        raise ValueError("the clips have no test or validation split to measure the video classifier on")
    device = torch.device(device)
    g = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    net = VideoCNN(train.channels, train.num_classes, cfg.widths, cfg.feature_dim).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps)
    moves = getattr(train, "trajectories", None)
    steps_target = None if moves is None else first_steps(moves)
    batch = min(cfg.batch_size, len(train))
    start, order, pos = time.perf_counter(), torch.randperm(len(train), generator=g), 0
    net.train()
    for step in range(cfg.steps):
        if pos + batch > len(order):
            order, pos = torch.randperm(len(train), generator=g), 0
        idx = order[pos : pos + batch]
        pos += batch
        _, logits, motion = net(_model_input(train.images[idx]).to(device))
        loss = F.cross_entropy(logits, train.labels[idx].to(device))
        if steps_target is not None:
            loss = loss + F.cross_entropy(motion.flatten(0, 1), steps_target[idx].flatten().to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if log and (step + 1) % 100 == 0:
            log(f"video classifier step {step + 1}/{cfg.steps}: loss {loss.item():.4f}")
    net.eval()
    meta = {
        "format": FORMAT, "version": 1, "dataset": dataset_key or train.name,
        "class_names": list(train.class_names), "channels": train.channels, "frames": train.frames,
        "image_size": train.size, "widths": list(cfg.widths), "feature_dim": cfg.feature_dim,
        "steps": cfg.steps, "batch_size": batch, "train_clips": len(train),
        "train_seconds": round(time.perf_counter() - start, 1), "eval_split": split, "eval_clips": len(held_out),
        "seed": cfg.seed, "motion_head": steps_target is not None,
    }
    clf = VideoClassifier(net, meta, device)
    feats, logits = clf.features_and_logits(held_out.images)
    meta["test_accuracy"] = float((logits.argmax(1) == held_out.labels.numpy()).mean())
    moves = getattr(held_out, "trajectories", None)
    if steps_target is not None and moves is not None:
        with torch.no_grad():
            motion = torch.cat([net(_model_input(held_out.images[s : s + 100]).to(device))[2].cpu()
                                for s in range(0, len(held_out), 100)])
        meta["first_step_accuracy"] = float((motion.argmax(2) == first_steps(moves)).float().mean())
    meta["feature_scale"] = float(1 / np.sqrt(max(np.mean(feats**2), 1e-12)))  # unit mean square (held out)
    return clf


def video_classifier_dir(data) -> Path:
    from difforge.eval.classifier import cache_root, dataset_key

    return cache_root() / "classifiers" / f"{dataset_key(data)}-video"


def load_or_train_video_classifier(data, directory: str | Path | None = None,
                                   cfg: VideoClassifierConfig = VideoClassifierConfig(), *, bundle=None,
                                   device: torch.device | str = "cpu", log: Callable[[str], None] | None = None
                                   ) -> VideoClassifier:
    """The video classifier in `directory` (default: the cache's for `data`); trained on
    `bundle` (default: `data` loaded) and saved there first when there is none."""
    from difforge.eval.classifier import dataset_key
    from difforge.io.outputs import check_output_dir

    directory = Path(directory) if directory is not None else video_classifier_dir(data)
    if is_video_classifier_dir(directory):
        return load_video_classifier(directory, device)
    check_output_dir(directory, holds="video classifier", is_ours=is_video_classifier_dir,
                     what="video classifier folder")
    if log:
        log(f"no video classifier for {dataset_key(data)} yet: training one ({directory})")
    if bundle is None:
        from difforge.data import load_dataset

        bundle = load_dataset(data)
    clf = train_video_classifier(bundle, cfg, dataset_key=dataset_key(data), device=device, log=log)
    clf.save(directory)
    return clf
