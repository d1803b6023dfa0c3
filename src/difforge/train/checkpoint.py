"""Checkpoints: atomic, hashed, verified on load, the last K kept.

Layout (DESIGN.md, "A run on disk"):

    checkpoints/step-N/model.safetensors   weights
    checkpoints/step-N/ema.safetensors     EMA weights
    checkpoints/step-N/train_state.pt      optimiser, LR scheduler, grad scaler, EMA step,
                                           RNG states, data position (weights_only-loadable)
    checkpoints/step-N/meta.json           step and SHA-256 of each file
    checkpoints/latest                     the name of the newest complete checkpoint

A checkpoint is written into a temporary directory beside the others, fsynced, and
renamed into place, so a crash mid-write never leaves a half checkpoint under a real name.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

FILES = ("model.safetensors", "ema.safetensors", "train_state.pt")


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, truncated or fails its hash check."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def step_dirs(root: Path) -> list[Path]:
    """Complete-looking `step-N` directories, oldest first."""
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        if p.is_dir() and p.name.startswith("step-") and p.name[5:].isdigit():
            found.append((int(p.name[5:]), p))
    return [p for _, p in sorted(found)]


def save_checkpoint(
    root: str | Path,
    step: int,
    model_state: dict[str, torch.Tensor],
    ema_state: dict[str, torch.Tensor],
    train_state: dict,
    keep: int = 3,
) -> Path:
    """Write `root/step-{step}` atomically, point `latest` at it, keep the newest `keep`."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step}"
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-step-{step}-", dir=root))
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in model_state.items()}, tmp / FILES[0])
        save_file({k: v.detach().contiguous().cpu() for k, v in ema_state.items()}, tmp / FILES[1])
        torch.save(train_state, tmp / FILES[2])
        meta = {"step": step, "sha256": {name: _sha256(tmp / name) for name in FILES}}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        for name in (*FILES, "meta.json"):
            _fsync_file(tmp / name)
        _fsync_dir(tmp)
        if final.exists():  # re-saving the same step (e.g. after a rollback)
            shutil.rmtree(final)
        os.rename(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _write_atomic_text(root / "latest", final.name + "\n")
    for old in step_dirs(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".tmp-step-*"):  # left by a process killed mid-write
        shutil.rmtree(stale, ignore_errors=True)
    return final


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
        if _sha256(f) != meta.get("sha256", {}).get(name):
            raise CheckpointError(f"{path}: {name} does not match its hash (truncated or corrupt)")
    return meta


def load_checkpoint(path: str | Path) -> tuple[dict, dict, dict]:
    """(model weights, EMA weights, train_state) of a verified checkpoint."""
    path = Path(path)
    verify_checkpoint(path)
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


def clean_stale(root: str | Path) -> list[str]:
    """Remove what a process killed in the middle of `save_checkpoint` leaves behind:
    `.tmp-step-*` directories and a `.latest.tmp` pointer. Returns their names."""
    root = Path(root)
    if not root.is_dir():
        return []
    removed = []
    for stale in sorted(root.glob(".tmp-step-*")):
        shutil.rmtree(stale, ignore_errors=True)
        removed.append(stale.name)
    pointer = root / ".latest.tmp"
    if pointer.exists():
        pointer.unlink()
        removed.append(pointer.name)
    return removed


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


def rng_state(device: torch.device) -> dict:
    """This process's global RNG states (CPU, and CUDA on a GPU): what dropout draws from."""
    rng = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    return rng


def restore_rng(rng: dict, world, device: torch.device, seed: int, step: int) -> None:
    """Restore rank `world.rank`'s global RNG from a checkpoint's `rng` entry.

    `rng` holds rank 0's states and, under `"ranks"`, every rank's. A checkpoint from
    another number of processes has no stream for ranks > 0: they start fresh ones.
    """
    ranks = rng.get("ranks")
    if ranks is not None and len(ranks) == world.size:
        mine = ranks[world.rank]
    elif world.rank == 0:
        mine = rng
    else:
        torch.manual_seed(seed + 7919 * world.rank + 104729 * step)
        return
    torch.set_rng_state(mine["torch"])
    if device.type == "cuda" and "cuda" in mine:
        torch.cuda.set_rng_state(mine["cuda"], device)
