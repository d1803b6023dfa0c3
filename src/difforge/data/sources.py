"""What `difforge prepare` can read: enumerate a source into labelled items.

A source is one of
- an image folder: sub-folders are classes (images found recursively inside each), or
  flat and unlabelled; the same rules as `load_image_folder` (it shares the scan);
- a zip of images: the same layout rules applied to the member paths;
- an idx folder (MNIST / Fashion-MNIST layout): every `*-images-idx3-ubyte[.gz]` with its
  `*-labels-idx1-ubyte[.gz]`;
- a CSV or JSONL manifest: one row per image, a `path` column (relative to the manifest's
  folder, or absolute) and an optional `label` column;
- tar shards in the WebDataset layout (`difforge.data.shards`): a folder of `*.tar`, one
  `.tar` or a brace pattern; labels from `.cls` (named by a `classes.txt` beside them).

Captions: an image folder's (`metadata.jsonl` or a `.txt` beside each image,
`difforge.data.captions`) and the shards' `.txt` members go with their images; caption
problems are skipped items like any other, with their one-line reasons.

Enumeration reads no pixels (except idx arrays, which are the pixels); files that cannot be
candidates (unsupported types, missing manifest entries, oversized zip members) come back
as (key, reason) pairs, like decoding failures later.
"""

from __future__ import annotations

import csv
import io
import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from difforge.data.folder import IMAGE_EXTENSIONS, _scan

MAX_MEMBER_BYTES = 256 * 2**20  # a zip member larger than this (uncompressed) is refused
SOURCE_KINDS = ("folder", "zip", "idx", "manifest", "shards")
_PATH_COLUMNS = ("path", "file", "filename", "image")
_LABEL_COLUMNS = ("label", "class", "category")


@dataclass(frozen=True)
class SourceItem:
    """One candidate image: `key` names it for people (a relative path, `zip:member`,
    `file#row`, `shard:member`); exactly one of (path), (path, member), (path, span),
    (row) locates its pixels."""

    key: str
    label: str | None
    path: str | None = None  # a file on disk, the zip holding `member`, or the shard holding `span`
    member: str | None = None
    row: int | None = None  # index into Source.arrays[path] for idx sources
    span: tuple[int, int] | None = None  # (offset, size) of the image's bytes in the shard `path`
    caption: str | None = None  # captioned sources: the image's caption


@dataclass
class Source:
    kind: str
    root: Path
    items: list[SourceItem]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    class_names: list[str] | None = None  # fixed by the source (idx), else from labels
    captioned: bool = False  # every item has a caption
    arrays: dict[str, np.ndarray] = field(default_factory=dict)  # idx: file -> (N, H, W)


def _label_order(labels: set[str]) -> list[str]:
    """Class names sorted numerically when all are integers ("2" before "10"), else by text."""
    if labels and all(s.lstrip("-").isdigit() for s in labels):
        return sorted(labels, key=int)
    return sorted(labels)


def _folder(root: Path) -> Source:
    from difforge.data.captions import read_folder_captions

    files, skipped = _scan(root)
    found = read_folder_captions(root, [p for p, _ in files], skipped)
    texts = None
    if found is not None:  # captioned: images without a usable caption are skipped
        texts = found.captions
        skipped = [(p, r) for p, r in skipped if Path(p) not in found.used] + found.problems
        files = [(p, cls) for p, cls in files if p in texts]
    items = [SourceItem(str(p.relative_to(root)), cls, path=str(p), caption=None if texts is None else texts[p])
             for p, cls in files]
    skipped = [(str(Path(p).relative_to(root)), reason) for p, reason in skipped]
    return Source("folder", root, items, skipped, captioned=texts is not None)


def _shards(spec: str | Path) -> Source:
    from difforge.data.shards import read_class_names, scan_shards, shard_labels, shard_paths

    paths = shard_paths(spec)
    samples, problems, captioned, _ = scan_shards(paths)
    samples, names = shard_labels(samples, read_class_names(paths), problems)
    root = Path(spec) if Path(spec).is_dir() else paths[0].parent
    short = {str(p): os.path.relpath(p, root) for p in paths}  # keys relative to the shards' folder

    def rel(key: str) -> str:
        shard, sep, member = key.partition(".tar:")
        return f"{short.get(shard + '.tar', shard + '.tar')}:{member}" if sep else short.get(key, key)

    items = [SourceItem(rel(s.key), None if s.label is None else names[s.label], path=s.shard,
                        span=(s.offset, s.size), caption=s.caption) for s in samples]
    src = Source("shards", root, items, [(rel(k), r) for k, r in problems], captioned=captioned)
    if names is not None:  # ordered as the labels; classes with no usable sample are dropped by `prepare`
        src.class_names = names
    return src


def _zip(path: Path) -> Source:
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise ValueError(f"{path}: not a readable zip file ({e})") from None
    found: list[tuple[str, str | None]] = []
    skipped: list[tuple[str, str]] = []
    with zf:
        for info in zf.infolist():
            if info.is_dir():
                continue
            parts = PurePosixPath(info.filename).parts
            key = f"zip:{info.filename}"
            if any(p.startswith(".") or p == "__MACOSX" for p in parts):
                continue
            if PurePosixPath(info.filename).suffix.lower() not in IMAGE_EXTENSIONS:
                skipped.append((key, f"unsupported file type {PurePosixPath(info.filename).suffix or '(none)'!r}"))
            elif info.file_size > MAX_MEMBER_BYTES:
                skipped.append((key, f"{info.file_size} bytes uncompressed is over {MAX_MEMBER_BYTES} (zip bomb?)"))
            else:
                found.append((info.filename, parts[0] if len(parts) > 1 else None))
    if any(top is not None for _, top in found):  # class folders: loose files are ignored
        skipped += [(f"zip:{m}", "not inside a class sub-folder") for m, top in found if top is None]
        found = [(m, top) for m, top in found if top is not None]
    found.sort(key=lambda mt: (mt[1] or "", mt[0]))
    items = [SourceItem(f"zip:{m}", top, path=str(path), member=m) for m, top in found]
    return Source("zip", path, items, skipped)


def _idx_files(root: Path) -> list[tuple[Path, Path | None]]:
    pairs = []
    for images in sorted(root.iterdir()):
        name = images.name
        if "-images-idx3-ubyte" not in name:
            continue
        stem = name.replace("-images-idx3-ubyte", "-labels-idx1-ubyte")
        labels = next((root / n for n in (stem, stem + ".gz", stem.removesuffix(".gz")) if (root / n).is_file()), None)
        pairs.append((images, labels))
    return pairs


def is_idx_folder(path: Path) -> bool:
    return path.is_dir() and any("-images-idx3-ubyte" in p.name for p in path.iterdir())


def _idx(root: Path) -> Source:
    from difforge.data.idx import FASHION_MNIST_CLASSES, read_idx

    src = Source("idx", root, [])
    max_label = -1
    labelled = True
    for images_path, labels_path in _idx_files(root):
        images = read_idx(images_path)
        if images.dtype != np.uint8 or images.ndim != 3:
            raise ValueError(f"{images_path}: expected uint8 (N, H, W) images, got {images.dtype} {images.shape}")
        labels = None
        if labels_path is not None:
            labels = read_idx(labels_path).astype(np.int64)
            if labels.shape != (len(images),):
                raise ValueError(f"{labels_path}: expected {len(images)} labels, got shape {labels.shape}")
            max_label = max(max_label, int(labels.max(initial=-1)))
        labelled &= labels is not None
        src.arrays[images_path.name] = images
        for i in range(len(images)):
            label = None if labels is None else str(int(labels[i]))
            src.items.append(SourceItem(f"{images_path.name}#{i}", label, path=images_path.name, row=i))
    if not labelled:
        src.items = [SourceItem(it.key, None, it.path, row=it.row) for it in src.items]
    elif max_label >= 0:
        names_file = root / "classes.txt"
        if names_file.is_file():
            names = [line.strip() for line in names_file.read_text().splitlines() if line.strip()]
        elif "fashion" in root.resolve().name.lower() and max_label < len(FASHION_MNIST_CLASSES):
            names = list(FASHION_MNIST_CLASSES)
        else:
            names = [str(i) for i in range(max_label + 1)]
        if len(names) <= max_label:
            raise ValueError(f"{names_file}: {len(names)} class names but labels go up to {max_label}")
        src.class_names = names
        src.items = [SourceItem(it.key, names[int(it.label)], it.path, row=it.row) for it in src.items]
    return src


def _manifest(path: Path) -> Source:
    base = path.parent
    rows: list[tuple[int, dict]] = []
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        rows = [(i + 2, {(k or "").strip().lower(): (v or "").strip() for k, v in r.items()})
                for i, r in enumerate(reader)]
    else:
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{i}: not valid JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{path}:{i}: expected a JSON object per line, got {type(obj).__name__}")
            rows.append((i, {str(k).lower(): v for k, v in obj.items()}))
    if not rows:
        raise ValueError(f"{path}: manifest has no rows")
    columns = set(rows[0][1])
    path_col = next((c for c in _PATH_COLUMNS if c in columns), None)
    if path_col is None:
        raise ValueError(f"{path}: no path column; expected one of {list(_PATH_COLUMNS)}, got {sorted(columns)}")
    label_col = next((c for c in _LABEL_COLUMNS if c in columns), None)
    src = Source("manifest", path, [])
    for line, row in rows:
        rel = row.get(path_col)
        label = row.get(label_col) if label_col else None
        label = None if label is None or str(label).strip() == "" else str(label).strip()
        if not rel:
            src.skipped.append((f"{path.name}:{line}", "empty path"))
            continue
        file = Path(str(rel)).expanduser()
        file = file if file.is_absolute() else base / file
        key = str(rel)
        if label_col and label is None:
            src.skipped.append((key, f"{path.name}:{line}: no label"))
        elif not file.is_file():
            src.skipped.append((key, f"{path.name}:{line}: file not found"))
        elif file.suffix.lower() not in IMAGE_EXTENSIONS:
            src.skipped.append((key, f"unsupported file type {file.suffix or '(none)'!r}"))
        else:
            src.items.append(SourceItem(key, label, path=str(file)))
    return src


def open_source(source: str | Path) -> Source:
    """Enumerate `source` (folder, .zip, idx folder, .csv / .jsonl manifest, tar shards)."""
    from difforge.data.shards import is_shard_spec
    from difforge.data.store import is_store

    path = Path(source)
    if is_store(path):
        raise ValueError(f"{path} is already a prepared store: train on it, or prepare from its original source")
    if is_shard_spec(source):
        src = _shards(source)
        if not src.items:
            first = f"; first: {src.skipped[0][0]}: {src.skipped[0][1]}" if src.skipped else ""
            raise ValueError(f"{source}: no usable samples ({len(src.skipped)} problems{first})")
        return src
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    if path.is_dir():
        src = _idx(path) if is_idx_folder(path) else _folder(path)
    elif path.suffix.lower() == ".zip":
        src = _zip(path)
    elif path.suffix.lower() in (".csv", ".jsonl", ".ndjson"):
        src = _manifest(path)
    else:
        raise ValueError(f"{path}: unsupported source; expected a folder, a .zip, an idx folder, "
                         "a .csv/.jsonl manifest or .tar shards")
    if src.class_names is None and src.items and any(it.label is not None for it in src.items):
        if any(it.label is None for it in src.items):  # manifests: labelled or not, not both
            raise ValueError(f"{path}: some items have labels and some do not")
        src.class_names = _label_order({it.label for it in src.items})
    if not src.items:
        first = f"; first skipped: {src.skipped[0][0]}: {src.skipped[0][1]}" if src.skipped else ""
        raise ValueError(f"{path}: no candidate images ({len(src.skipped)} files skipped{first})")
    return src
