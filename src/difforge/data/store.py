"""The prepared-data store: a folder that `difforge train --data DIR` reads directly.

    DIR/manifest.json        format, settings, source, class names, per split: count,
                             array files with their SHA-256 and shapes, and per image its
                             source, content hash, perceptual hash, stored size and mode
    DIR/report.json          what preparation removed or flagged, and why
    DIR/{split}_images.npy   uint8 (N, C, S, S), split in train / val / test; a store of
                             clips (`prepare --clip-frames`): uint8 (N, C, T, S, S), and the
                             manifest's "clips" says {"frames": T, "fps", "stride"}
    DIR/{split}_labels.npy   int64 (N,), when the data is labelled

or, written with `layout="shards"` (`prepare --format shards`), in place of the arrays:

    DIR/{split}/000000.tar   WebDataset-layout tar shards (`difforge.data.shards`): per
                             sample KEY.png, KEY.txt (its caption, when captioned) and
                             KEY.cls (its label index, when labelled); KEY = 000000, ...
    DIR/{split}/classes.txt  the class names, one per line, when labelled

Captions (captioned sources) are also a column of the manifest's per-image items; the
report holds their statistics. Arrays are plain .npy files, opened memory-mapped
(copy-on-write): loading is instant and pages are read as batches touch them; shards
are decoded into memory when loaded. A store is written to a temporary folder beside
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
VERSION = 2  # 2: captions, the shards layout
CLIPS_VERSION = 3  # 3: clips; a store of images is still written as VERSION, which older difforge reads
READS = (1, 2, 3)  # the store versions this difforge reads
LAYOUTS = ("arrays", "shards")


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


def write_store(prepared, out_dir: str | Path, *, overwrite: bool = False, layout: str = "arrays",
                shard_size: int | None = None) -> Path:
    """Write a `prepare.Prepared` to `out_dir` atomically; returns the folder. `layout`
    "arrays" writes .npy files, "shards" tar shards of `shard_size` samples
    (`shards.DEFAULT_SHARD_SIZE` when None) per split.

    An existing `out_dir` must be empty, or a store (replaced only with `overwrite`):
    any other folder is left alone and refused.
    """
    from difforge import __version__
    from difforge.data.shards import CLASSES_FILE, DEFAULT_SHARD_SIZE, write_shards

    if layout not in LAYOUTS:
        raise ValueError(f"unknown store layout {layout!r}; expected one of {list(LAYOUTS)}")
    shard_size = DEFAULT_SHARD_SIZE if shard_size is None else shard_size
    if shard_size < 1:
        raise ValueError(f"shard size must be >= 1, got {shard_size}")
    out = check_out_dir(out_dir, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        splits = {}
        for s, images in prepared.arrays.items():
            entry = {"count": int(len(images)), "shape": list(images.shape[1:])}
            if layout == "shards":
                labels = None if prepared.labels is None else prepared.labels[s]
                written = write_shards(tmp / s, images, labels, prepared.items[s].get("caption"), shard_size)
                entry["shards"] = [{**w, "file": f"{s}/{w['file']}"} for w in written]
                if labels is not None and written:
                    (tmp / s / CLASSES_FILE).write_text("".join(f"{c}\n" for c in prepared.class_names))
            else:
                entry["images"] = f"{s}_images.npy"
                entry["images_sha256"] = _save_npy(tmp / entry["images"], images)
                if prepared.labels is not None:
                    entry["labels"] = f"{s}_labels.npy"
                    entry["labels_sha256"] = _save_npy(tmp / entry["labels"], prepared.labels[s])
            if prepared.labels is not None:
                counts = np.bincount(prepared.labels[s], minlength=len(prepared.class_names))
                entry["per_class"] = {c: int(n) for c, n in zip(prepared.class_names, counts)}
            entry["items"] = prepared.items[s]
            splits[s] = entry
        manifest = {  # "format" first: `is_store` looks for it in the first bytes
            "format": FORMAT,
            "version": VERSION if getattr(prepared, "clips", None) is None else CLIPS_VERSION,
            "difforge": __version__,
            "layout": layout,
            "source": prepared.source,
            "settings": prepared.settings,
            "class_names": prepared.class_names,
            "size": prepared.settings["size"],
            "channels": prepared.settings["channels"],
            "splits": splits,
        }
        if getattr(prepared, "clips", None) is not None:
            manifest["clips"] = prepared.clips
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
    if manifest.get("version") not in READS:
        raise ValueError(f"{path}: store version {manifest.get('version')!r}; this difforge reads versions "
                         f"{', '.join(map(str, READS))}")
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
    return load_split(path, manifest, split, mmap=mmap, verify=verify)[:2]


def load_split(path: str | Path, manifest: dict, split: str, *, mmap: bool = True,
               verify: bool = False) -> tuple[np.ndarray, np.ndarray | None, list[str] | None]:
    """`load_split_arrays` and the split's captions (None when the store has none)."""
    path = Path(path)
    entry = manifest["splits"].get(split)
    if entry is None:
        raise ValueError(f"{path}: no split {split!r}; has {sorted(manifest['splits'])}")
    if manifest.get("layout") == "shards":
        return _load_shard_split(path, manifest, entry, verify)
    captions = entry["items"].get("caption")
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
    return images, labels, captions


def _load_shard_split(path: Path, manifest: dict, entry: dict, verify: bool):
    """A split of the shards layout, decoded into memory; any problem is an error (the
    store wrote these shards itself)."""
    from difforge.data.shards import read_image_bytes, scan_shards
    from difforge.io.decode import decode_image, to_array

    n, shape = entry["count"], tuple(entry["shape"])
    files = [path / s["file"] for s in entry["shards"]]
    for f, s in zip(files, entry["shards"]):
        if not f.is_file():
            raise ValueError(f"{f}: missing from the store")
        if verify and sha256_file(f) != s["sha256"]:
            raise ValueError(f"{f}: SHA-256 does not match the manifest (file changed or corrupt)")
    samples, problems, captioned, labelled = scan_shards(files)
    if problems:
        raise ValueError(f"{problems[0][0]}: {problems[0][1]} (a corrupt store)")
    images = np.empty((n, *shape), np.uint8)
    if len(samples) != n:
        raise ValueError(f"{path}: the shards hold {len(samples)} samples; the manifest says {n}")
    for i, s in enumerate(samples):
        try:
            im, size, _ = decode_image(read_image_bytes(s), expect=(shape[2], shape[1]))
        except ValueError as e:
            raise ValueError(f"{s.key}: {e} (a corrupt store)") from None
        images[i] = to_array(im, shape[0]).transpose(2, 0, 1)
    labels = None
    if manifest["class_names"] is not None:
        labels = np.array([s.label if s.label is not None else -1 for s in samples], np.int64)
        if n and (labels.min() < 0 or labels.max() >= len(manifest["class_names"])):
            raise ValueError(f"{path}: shard labels outside 0..{len(manifest['class_names']) - 1}")
    captions = [s.caption for s in samples] if captioned else None
    return images, labels, captions


def load_store(path: str | Path, *, verify: bool = False):
    """The store's splits as `ImageDataset`s (uint8 tensors over memory-mapped arrays), or
    `VideoDataset`s for a store of clips: returns (manifest, {split: dataset or None when empty})."""
    import torch

    from difforge.data.dataset import ImageDataset, VideoDataset

    manifest = read_manifest(path)
    out = {}
    for split in manifest["splits"]:
        images, labels, captions = load_split(path, manifest, split, verify=verify)
        if len(images) == 0:
            out[split] = None
            continue
        out[split] = (VideoDataset if "clips" in manifest else ImageDataset)(
            images=torch.from_numpy(images),
            labels=None if labels is None else torch.from_numpy(labels),
            class_names=manifest["class_names"] if labels is not None else None,
            name=Path(path).resolve().name,
            captions=captions,
        )
    return manifest, out
