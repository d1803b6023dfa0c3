"""Sample grids drawn during training (samples/step-N.png, final.png), with a progress bar."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from torch import nn

from difforge.defaults import DEFAULT_SAMPLER


def draw_previews(trainer, name: str, nets: tuple[tuple[str, nn.Module], ...],
                  per_class: int) -> Iterator[tuple[str, Path]]:
    """For each (tag, network): samples/NAME{tag}.png; yields (tag, path).

    A class-conditional or unconditional model draws a grid (one row per class; a text
    model, one row per example prompt of its card); an SR3
    model upscales held-out images (`Pipeline.save_upscale_grid`; a text one with their captions).
    """
    for tag, net in nets:
        was_training = net.training
        net.eval()
        try:
            path = trainer.run_dir / "samples" / f"{name}{tag}.png"
            if trainer.cond_image is not None:
                yield tag, _upscale_preview(trainer, net, path)
            elif getattr(trainer, "video", False):
                yield tag, _video_preview(trainer, net, path, name + tag)
            else:
                yield tag, _sample_grid(trainer, net, path, name + tag, per_class)
        finally:
            net.train(was_training)


def _upscale_preview(trainer, net: nn.Module, path: Path) -> Path:
    bundle = trainer.bundle
    held_out = bundle.val if bundle.val is not None and len(bundle.val) else trainer.train_set
    prompts = held_out.captions if trainer.text else None  # a text model upscales each image with its caption
    return trainer.pipeline(net).save_upscale_grid(held_out.images, path, prompts)


VIDEO_PREVIEW_STEPS = 25  # DDIM steps of a video preview (a clip costs T images per step)


def _video_preview(trainer, net: nn.Module, path: Path, title: str) -> Path:
    """A video model's preview: one clip per class (8 clips without classes), one row of
    frames per clip in NAME.png, and the clips side by side as NAME.gif."""
    from tqdm.auto import tqdm

    pipe = trainer.pipeline(net)
    labels = pipe.default_labels(per_class=1)
    n = len(labels) if labels is not None else 8
    given = {}
    if pipe.residual_video:  # rolled out from the first K frames of held-out clips, with their labels
        given, labels, n = _rvd_given(trainer, pipe, n)
    with tqdm(total=VIDEO_PREVIEW_STEPS * -(-n // 16), desc=f"samples/{title}.png", unit="step", leave=False,
              disable=not trainer.progress, dynamic_ncols=True) as bar:
        clips, _ = pipe.generate_video(n, labels, seed=0, steps=VIDEO_PREVIEW_STEPS, callback=lambda d: bar.update(1),
                                       **given)
    pipe.save_video(clips, path.with_suffix(".gif"))
    return pipe.save_video_grid(clips, path)


def _rvd_given(trainer, pipe, n: int) -> tuple[dict, object, int]:
    """An RVD preview's given frames (the first K of up to n held-out clips, else training
    clips), their labels and their count."""
    import torch

    from difforge.io.space import from_uint8

    bundle = trainer.bundle
    source = bundle.val if bundle.val is not None and len(bundle.val) else trainer.train_set
    n = min(n, len(source))
    k, t = pipe.model.core.context, pipe.card.frames
    mask = torch.arange(t) < k
    labels = source.labels[:n] if pipe.num_classes else None
    return {"given": from_uint8(source.images[:n]), "mask": mask}, labels, n


def _sample_grid(trainer, net: nn.Module, path: Path, title: str, per_class: int) -> Path:
    from tqdm.auto import tqdm

    pipe = trainer.pipeline(net)  # sampling code, shared with `difforge sample`
    labels = pipe.default_labels(per_class=per_class)
    prompts = pipe.default_prompts(per_class) if pipe.takes_text else None
    n = len(labels) if labels is not None else len(prompts) if prompts else 10 * per_class
    steps = len(pipe.sigmas(DEFAULT_SAMPLER)) - 1
    with tqdm(total=steps * -(-n // 100), desc=f"samples/{title}.png", unit="step", leave=False,
              disable=not trainer.progress, dynamic_ncols=True) as bar:
        images, _ = pipe.generate(labels=labels, n=None if labels is not None else n, seed=0, prompts=prompts,
                                  callback=lambda d: bar.update(1))
    return pipe.save_grid(images, path, labels, per_row=per_class if prompts else None)
