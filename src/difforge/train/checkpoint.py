"""The checkpoint writer: atomic, hashed, the last K kept (reading and verifying them:
`difforge.runs`).

Layout:

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

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from difforge.runs import (  # noqa: F401 - reading lives in runs; re-exported for training code
    FILES,
    CheckpointError,
    find_resumable,
    load_checkpoint,
    sha256_file,
    step_dirs,
    verify_checkpoint,
    weights_file,
)


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
        meta = {"step": step, "sha256": {name: sha256_file(tmp / name) for name in FILES}}
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
