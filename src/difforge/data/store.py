"""The prepared-data store: a folder that `difforge train --data DIR` reads directly.

    DIR/manifest.json        format, settings, source, class names, per split: count,
                             array files with their SHA-256 and shapes, and per image its
                             source, content hash, perceptual hash, stored size and mode
    DIR/report.json          what preparation removed or flagged, and why
    DIR/{split}_images.npy   uint8 (N, C, S, S), split in train / val / test
    DIR/{split}_labels.npy   int64 (N,), when the data is labelled

Arrays are plain .npy files, opened memory-mapped (copy-on-write): loading is instant
and pages are read as batches touch them. A store is written to a temporary folder beside
DIR and renamed into place, so a crash never leaves a half-written store under DIR.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from difforge.runs import sha256_file  # one hashing of files, shared with checkpoints

FORMAT = "difforge-prepared"
VERSION = 1


def is_store(path: str | Path) -> bool:
    """True when `path` is a folder holding a prepared store (reads 64 bytes)."""
    m = Path(path) / "manifest.json"
    if not m.is_file():
        return False
    with open(m, "rb") as f:
        return f'"format":"{FORMAT}"'.encode() in f.read(64).replace(b" ", b"")


def _write_json(path: Path, obj: dict) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, separators=(",", ":"))
        f.flush()
        os.fsync(f.fileno())


def _save_npy(path: Path, a: np.ndarray) -> str:
    with open(path, "wb") as f:
        np.save(f, a, allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())
    return sha256_file(path)


def check_out_dir(out_dir: str | Path, overwrite: bool) -> Path:
    """Refuse an `out_dir` that a store may not be written to (before any work)."""
    from difforge.io.outputs import OutputError, check_output_dir

    try:
        return check_output_dir(out_dir, holds="prepared store", is_ours=is_store, overwrite=overwrite,
                                what="OUT_DIR")
    except OutputError as e:
        raise FileExistsError(str(e)) from None


def write_store(prepared, out_dir: str | Path, *, overwrite: bool = False) -> Path:
    """Write a `prepare.Prepared` to `out_dir` atomically; returns the folder.

    An existing `out_dir` must be empty, or a store (replaced only with `overwrite`):
    any other folder is left alone and refused.
    """
    from difforge import __version__

    out = check_out_dir(out_dir, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        splits = {}
        for s, images in prepared.arrays.items():
            entry = {"count": int(len(images)), "shape": list(images.shape[1:]), "images": f"{s}_images.npy"}
            entry["images_sha256"] = _save_npy(tmp / entry["images"], images)
            if prepared.labels is not None:
                entry["labels"] = f"{s}_labels.npy"
                entry["labels_sha256"] = _save_npy(tmp / entry["labels"], prepared.labels[s])
                counts = np.bincount(prepared.labels[s], minlength=len(prepared.class_names))
                entry["per_class"] = {c: int(n) for c, n in zip(prepared.class_names, counts)}
            entry["items"] = prepared.items[s]
            splits[s] = entry
        manifest = {  # "format" first: `is_store` looks for it in the first bytes
            "format": FORMAT,
            "version": VERSION,
            "difforge": __version__,
            "source": prepared.source,
            "settings": prepared.settings,
            "class_names": prepared.class_names,
            "size": prepared.settings["size"],
            "channels": prepared.settings["channels"],
            "splits": splits,
        }
        _write_json(tmp / "report.json", prepared.report)
        _write_json(tmp / "manifest.json", manifest)
        old = None
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            out.rename(old)
        tmp.rename(out)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def read_manifest(path: str | Path) -> dict:
    path = Path(path)
    if not is_store(path):
        raise ValueError(f"{path} is not a prepared store (no manifest.json of format {FORMAT!r})")
    try:
        manifest = json.loads((path / "manifest.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path / 'manifest.json'}: corrupt ({e})".splitlines()[0]) from None
    if manifest.get("version") != VERSION:
        raise ValueError(f"{path}: store version {manifest.get('version')!r}; this difforge reads version {VERSION}")
    return manifest


def read_report(path: str | Path) -> dict:
    f = Path(path) / "report.json"
    return json.loads(f.read_text()) if f.is_file() else {}


def _open_array(path: Path, dtype: np.dtype, shape: tuple[int, ...], mmap: bool) -> np.ndarray:
    if not path.is_file():
        raise ValueError(f"{path}: missing from the store")
    try:
        a = np.load(path, mmap_mode="c" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise ValueError(f"{path}: corrupt or truncated array ({e})".splitlines()[0]) from None
    if a.dtype != dtype or a.shape != shape:
        raise ValueError(f"{path}: expected {np.dtype(dtype)} {shape}, found {a.dtype} {a.shape}")
    return a


def load_split_arrays(path: str | Path, manifest: dict, split: str, *, mmap: bool = True,
                      verify: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """(images uint8 (N, C, S, S), labels int64 (N,) or None) of one split, checked
    against the manifest's shapes (and, with `verify`, its SHA-256 hashes)."""
    path = Path(path)
    entry = manifest["splits"].get(split)
    if entry is None:
        raise ValueError(f"{path}: no split {split!r}; has {sorted(manifest['splits'])}")
    n = entry["count"]
    files = [(entry["images"], entry.get("images_sha256"))]
    images = _open_array(path / entry["images"], np.dtype(np.uint8), (n, *entry["shape"]), mmap)
    labels = None
    if "labels" in entry:
        files.append((entry["labels"], entry.get("labels_sha256")))
        labels = _open_array(path / entry["labels"], np.dtype(np.int64), (n,), mmap)
        if n and (labels.min() < 0 or labels.max() >= len(manifest["class_names"])):
            raise ValueError(f"{path / entry['labels']}: labels outside 0..{len(manifest['class_names']) - 1}")
    if verify:
        for name, want in files:
            if sha256_file(path / name) != want:
                raise ValueError(f"{path / name}: SHA-256 does not match the manifest (file changed or corrupt)")
    return images, labels


def load_store(path: str | Path, *, verify: bool = False):
    """The store's splits as `ImageDataset`s (uint8 tensors over memory-mapped arrays):
    returns (manifest, {split: ImageDataset or None when empty})."""
    import torch

    from difforge.data.dataset import ImageDataset

    manifest = read_manifest(path)
    out = {}
    for split in manifest["splits"]:
        images, labels = load_split_arrays(path, manifest, split, verify=verify)
        if len(images) == 0:
            out[split] = None
            continue
        out[split] = ImageDataset(
            images=torch.from_numpy(images),
            labels=None if labels is None else torch.from_numpy(labels),
            class_names=manifest["class_names"] if labels is not None else None,
            name=Path(path).resolve().name,
        )
    return manifest, out
