"""Run directories on disk, for reading: the layout, and how checkpoints are verified
and found. Training writes them (`train/checkpoint.py`); sampling, export, serving and
the task commands only read them, through this module.

    RUN/config.yaml                        the resolved training config
    RUN/model.json                         the model card (`difforge.models.card`)
    RUN/checkpoints/step-N/model.safetensors   weights
    RUN/checkpoints/step-N/ema.safetensors     EMA weights
    RUN/checkpoints/step-N/train_state.pt      optimiser, LR scheduler, grad scaler, EMA step,
                                               RNG states, data position (weights_only-loadable)
    RUN/checkpoints/step-N/meta.json           step and SHA-256 of each file
    RUN/checkpoints/latest                     the name of the newest complete checkpoint
"""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import torch

FILES = ("model.safetensors", "ema.safetensors", "train_state.pt")


def is_run_dir(path: str | Path) -> bool:
    """Whether `path` holds a training run (its config.yaml or model card)."""
    return (Path(path) / "config.yaml").is_file() or (Path(path) / "model.json").is_file()


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, truncated or fails its hash check."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def step_dirs(root: Path) -> list[Path]:
    """Complete-looking `step-N` directories, oldest first."""
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        if p.is_dir() and p.name.startswith("step-") and p.name[5:].isdigit():
            found.append((int(p.name[5:]), p))
    return [p for _, p in sorted(found)]


def verify_checkpoint(path: str | Path) -> dict:
    """Return meta.json after checking every file's presence and SHA-256."""
    path = Path(path)
    meta_path = path / "meta.json"
    if not meta_path.is_file():
        raise CheckpointError(f"{path}: meta.json missing (incomplete checkpoint)")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: meta.json is not valid JSON ({e})") from None
    for name in FILES:
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"{path}: {name} missing")
        if sha256_file(f) != meta.get("sha256", {}).get(name):
            raise CheckpointError(f"{path}: {name} does not match its hash (truncated or corrupt)")
    return meta


def load_checkpoint(path: str | Path) -> tuple[dict, dict, dict]:
    """(model weights, EMA weights, train_state) of a verified checkpoint."""
    path = Path(path)
    verify_checkpoint(path)
    from safetensors.torch import load_file

    model = load_file(path / FILES[0])
    ema = load_file(path / FILES[1])
    try:
        state = torch.load(path / FILES[2], map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # weights_only refuses any global it does not allow
        reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"refusing to load {path / FILES[2]}: it holds pickled objects that could run code when loaded "
            f"({reason[:160]}); if you do not trust it, delete {path} and resume from an older checkpoint"
        ) from None
    return model, ema, state


def find_resumable(root: str | Path) -> tuple[Path | None, list[str]]:
    """The newest checkpoint that verifies, and a message for each newer one skipped.

    Every `step-N` directory is tried from newest to oldest; `latest` is only a pointer
    for people and tools (a crash between the rename and the pointer update leaves a
    complete checkpoint newer than `latest`, and it is used).
    """
    problems: list[str] = []
    for c in reversed(step_dirs(Path(root))):
        try:
            verify_checkpoint(c)
            return c, problems
        except CheckpointError as e:
            problems.append(str(e))
    return None, problems


def weights_file(path: str | Path, ema: bool = True) -> Path:
    return Path(path) / (FILES[1] if ema else FILES[0])
