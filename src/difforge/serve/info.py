"""What GET /v1/model reports: the model, how it was trained, and what it scored."""

from __future__ import annotations

import json
from pathlib import Path

from difforge.defaults import DEFAULT_SAMPLER
from difforge.io.video import DEFAULT_FPS

EVAL_KEYS = ("fd", "kid", "precision", "recall", "classifier_score", "conditional_accuracy")


def _last_metrics(path: Path) -> dict:
    """The newest value of each training metric in metrics.jsonl (loss, val_loss, ...)."""
    out: dict = {}
    if not path.is_file():
        return out
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
        for k in ("loss", "val_loss", "val_loss_ema", "step"):
            if isinstance(row.get(k), (int, float)):
                out[k] = row[k]
    return out


def _eval_metrics(path: Path) -> dict | None:
    try:
        report = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    spaces = report.get("metrics", {})
    return {"n": report.get("n"), **{space: {k: m[k] for k in EVAL_KEYS if k in m} for space, m in spaces.items()}}


def describe_model(path: str | Path, pipe) -> dict:
    """A JSON-able description of the loaded model and where it came from."""
    from difforge.hub import resolve_model_dir

    name = str(path) if not Path(path).exists() else Path(path).resolve().name  # a Hub id names itself
    path = resolve_model_dir(path)
    card = pipe.card
    step, weights = card.step, card.weights
    if (path / "model.json").is_file():  # a run directory: the checkpoint load_pipeline picks
        from difforge.runs import find_resumable

        ckpt, _ = find_resumable(path / "checkpoints")
        if ckpt is not None:
            step = json.loads((ckpt / "meta.json").read_text()).get("step", step)
    metrics = _last_metrics(path / "metrics.jsonl")
    evaluation = _eval_metrics(path / "eval" / "report.json")
    return {
        "name": name,
        "preset": card.architecture.preset,
        "parameters": sum(p.numel() for p in pipe.net.parameters()),
        "image_size": card.native_size,
        "model_size": card.image_size,
        "channels": card.channels,
        "num_classes": pipe.num_classes,
        "class_names": pipe.class_names,
        "takes_text": pipe.takes_text,
        "takes_clips": pipe.takes_clips,
        "frames": card.frames,
        "fps": DEFAULT_FPS if pipe.takes_clips else None,
        "prompts": pipe.default_prompts() if pipe.takes_text else None,
        "text": _text(pipe),
        "dataset": card.dataset,
        "diffusion": card.diffusion.to_dict(),
        "prediction": card.prediction,
        "training_steps": step,
        "weights": weights,
        "metrics": {"training": metrics or None, "evaluation": evaluation},
        "device": str(pipe.device),
        "default_cfg": pipe.default_cfg,
        "default_cfg_interval": list(pipe.default_cfg_interval) if pipe.default_cfg_interval else None,
        "default_sampler": DEFAULT_SAMPLER,
        "samplers": _samplers(pipe),
    }


def _text(pipe) -> dict | None:
    """A text-to-image model's encoder and its prompt limit in tokens; None for other models."""
    if not pipe.takes_text:
        return None
    spec = pipe.card.conditioning
    return {"encoder": spec.encoder, "max_tokens": spec.max_tokens}


def _samplers(pipe) -> dict:
    """Each sampler this model can run, with its default steps, grid and options."""
    from difforge.pipeline import default_grid
    from difforge.sampling import SAMPLERS, sampler_options

    out = {}
    for name in SAMPLERS:
        try:
            steps = len(pipe.sigmas(name)) - 1
        except ValueError:  # a sampler this model's noise process does not support
            continue
        out[name] = {"default_steps": steps, "default_grid": default_grid(name),
                     "options": sorted(sampler_options(name))}
    return out
