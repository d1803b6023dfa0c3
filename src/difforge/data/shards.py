"""Captioned image data as tar shards in the WebDataset layout, read and written with the
standard library's `tarfile`.

A shard is an uncompressed tar whose members are grouped into samples by key: the member
path up to the first "." of its file name is the key, the rest the extension, and a
sample is a run of consecutive members sharing a key:

    000042.png   the image (any extension in `IMAGE_EXTENSIONS`: .png, .jpg, .jpeg, .webp, ...)
    000042.txt   its caption, UTF-8 (optional; when any sample has one, every sample needs one)
    000042.cls   its class as a decimal integer (optional; likewise all or none)

Data given as shards is a folder of `*.tar` files (read in name order), one `.tar` file,
or a brace pattern (`data/{000000..000009}.tar`, `data/{a,b}.tar`). Class names come
from a `classes.txt` (one name per line, line i naming class i) beside the shards, else
they are the class numbers 0..max.

Reading never stops on a bad member and never loses a good sample: every problem is one
(where, reason) pair, `where` being `SHARD:MEMBER` (or the shard), in the style of
`difforge.data.captions`: an image that does not decode (found when it is decoded), a
caption that is not UTF-8, empty or over `MAX_CAPTION_CHARS` characters, a caption or
label without an image, a second image for one key, a label that is not a non-negative
integer, a key that comes back after other samples, a member with no extension or an
unknown one, a shard that is not a tar or ends inside a member (truncated; the samples
before the damage are kept). Image bytes are not held in memory: the scan records where
each image lies in its shard (uncompressed tars are seekable) and the decoder reads it
from there.

Writing (`write_shards`, used by `difforge prepare --format shards`) is deterministic:
members in sample order, PNG images, modification time 0, owner 0:0 with no names,
mode 0644, the ustar format; the same data gives byte-identical shards.
"""

from __future__ import annotations

import io
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from difforge.data.captions import _MAX_TXT_BYTES, MAX_CAPTION_CHARS, _check

DEFAULT_SHARD_SIZE = 1000  # samples per shard written by `prepare --format shards`
CLASSES_FILE = "classes.txt"
_MAX_CLS_BYTES = 32
_BLOCK = tarfile.BLOCKSIZE

Problems = list[tuple[str, str]]


def _image_extensions() -> frozenset[str]:
    from difforge.data.folder import IMAGE_EXTENSIONS

    return frozenset(e.lstrip(".") for e in IMAGE_EXTENSIONS)


# ---------------------------------------------------------------- naming the shards
def expand_braces(pattern: str) -> list[str]:
    """Expand `{a..b}` (integers; zero-padded when `a` is) and `{x,y,z}` groups, left to
    right, as WebDataset and the shell do: `s/{00..02}.tar` -> s/00.tar, s/01.tar, s/02.tar."""
    m = re.search(r"\{([^{}]*)\}", pattern)
    if m is None:
        return [pattern]
    body, head, tail = m.group(1), pattern[: m.start()], pattern[m.end() :]
    r = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if r:
        lo, hi = int(r.group(1)), int(r.group(2))
        if hi < lo:
            raise ValueError(f"{pattern}: the range {{{body}}} is empty (its end is below its start)")
        width = len(r.group(1)) if r.group(1).startswith("0") else 0
        choices = [str(i).zfill(width) for i in range(lo, hi + 1)]
    elif "," in body:
        choices = body.split(",")
    else:
        raise ValueError(f"{pattern}: {{{body}}} is neither a range {{A..B}} nor a list {{x,y}}")
    return [name for c in choices for name in expand_braces(head + c + tail)]


def is_shard_spec(path: str | Path) -> bool:
    """True when `path` names shards: a brace pattern, a `.tar` file, or a folder with
    `*.tar` files and no images beside them."""
    from difforge.data.folder import IMAGE_EXTENSIONS

    s = str(path)
    if "{" in s and s.endswith(".tar"):
        return True
    p = Path(path)
    if p.is_file():
        return p.suffix.lower() == ".tar"
    if not p.is_dir():
        return False
    files = [f for f in p.iterdir() if f.is_file() and not f.name.startswith(".")]
    return any(f.suffix.lower() == ".tar" for f in files) and not any(
        f.suffix.lower() in IMAGE_EXTENSIONS for f in files)


def shard_paths(spec: str | Path) -> list[Path]:
    """The shards `spec` names, in order: a folder's `*.tar` by name, one `.tar`, or the
    expansion of a brace pattern (every shard it names must exist)."""
    s = str(spec)
    if "{" in s:
        paths = [Path(p) for p in expand_braces(s)]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"{s}: {len(missing)} of the {len(paths)} shards it names do not exist "
                                    f"(first: {missing[0]})")
        return paths
    p = Path(spec)
    if p.is_dir():
        paths = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() == ".tar"
                       and not f.name.startswith("."))
        if not paths:
            raise ValueError(f"{p}: no .tar shards in this folder")
        return paths
    if p.is_file():
        return [p]
    raise FileNotFoundError(f"{p}: no such file or directory")


def read_class_names(paths: list[Path]) -> list[str] | None:
    """The names in `classes.txt` beside the first shard, or None when there is none."""
    f = paths[0].parent / CLASSES_FILE
    if not f.is_file():
        return None
    return [line.strip() for line in f.read_text(encoding="utf-8-sig").splitlines() if line.strip()]


# ---------------------------------------------------------------- reading
@dataclass(frozen=True)
class ShardSample:
    """One usable sample: `key` names it for people (`SHARD:MEMBER` of its image); its image
    is `size` bytes at `offset` in `shard`."""

    key: str
    shard: str
    member: str
    offset: int
    size: int
    caption: str | None = None
    label: int | None = None


@dataclass
class _Open:
    """A sample being gathered: its image and the outcome of its caption and label."""

    key: str
    image: tarfile.TarInfo | None = None
    caption: tuple[str | None, str | None] | None = None  # (caption, reason refused), None: no .txt
    label: tuple[int | None, str | None] | None = None
    others: list[str] | None = None  # member names of the caption / label, for a sample without image


def _read_small(tf: tarfile.TarFile, m: tarfile.TarInfo, limit: int) -> bytes | None:
    if m.size > limit:
        return None
    f = tf.extractfile(m)
    return f.read() if f is not None else b""


def _caption(tf: tarfile.TarFile, m: tarfile.TarInfo) -> tuple[str | None, str | None]:
    name = PurePosixPath(m.name).name
    raw = _read_small(tf, m, _MAX_TXT_BYTES)
    if raw is None:
        return None, f"caption {name} is over {_MAX_TXT_BYTES} bytes (the limit is {MAX_CAPTION_CHARS} chars)"
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        return None, f"caption {name} is not UTF-8 (byte {e.start})"
    return _check(text, name)


def _label(tf: tarfile.TarFile, m: tarfile.TarInfo) -> tuple[int | None, str | None]:
    name = PurePosixPath(m.name).name
    raw = _read_small(tf, m, _MAX_CLS_BYTES)
    text = None if raw is None else raw.decode("ascii", errors="replace").strip()
    if text is None or not text.isdigit():
        shown = f"{len(raw or b'')} bytes" if text is None or len(text) > _MAX_CLS_BYTES else repr(text)
        return None, f"label {name} is not a non-negative integer ({shown})"
    return int(text), None


def _scan_one(path: Path, samples: list[ShardSample], problems: Problems, has: set[str]) -> None:
    """Add the samples of one shard to `samples`, its problems to `problems`, and "txt" /
    "cls" to `has` when an image of the shard has a caption / label (usable or not)."""
    images = _image_extensions()
    where = str(path)
    try:
        file_size = path.stat().st_size
        tf = tarfile.open(path, "r:")
    except (tarfile.TarError, OSError) as e:
        problems.append((where, f"not an uncompressed tar file ({type(e).__name__}: {str(e).splitlines()[0]})"
                         if str(e) else f"not an uncompressed tar file ({type(e).__name__})"))
        return
    seen: set[str] = set()
    current: _Open | None = None

    def close(s: _Open | None) -> None:
        if s is None:
            return
        if s.image is None:
            for name in s.others or []:
                what = "caption" if name.lower().endswith(".txt") else "label"
                problems.append((f"{where}:{name}", f"{what} without an image (no image member with key {s.key!r})"))
            return
        key = f"{where}:{s.image.name}"
        caption = label = None
        has.update(ext for ext, part in (("txt", s.caption), ("cls", s.label)) if part is not None)
        if s.caption is not None:
            caption, reason = s.caption
            if caption is None:
                problems.append((key, reason))
                return
        if s.label is not None:
            label, reason = s.label
            if label is None:
                problems.append((key, reason))
                return
        samples.append(ShardSample(key, where, s.image.name, s.image.offset_data, s.image.size, caption, label))

    last = None
    with tf:
        while True:
            try:
                m = tf.next()
            except (tarfile.TarError, OSError) as e:
                after = f"after member {last!r}" if last else "at its start"
                problems.append((where, f"truncated or corrupt {after} ({type(e).__name__}: {e})".splitlines()[0]))
                break
            if m is None:
                if not _ends_properly(path, tf.offset, file_size):
                    after = f"after member {last!r}" if last else "at its start"
                    problems.append((where, f"truncated {after}: no end-of-archive marker "
                                            "(the samples before are kept)"))
                break
            if m.offset_data + m.size > file_size:
                short = m.offset_data + m.size - file_size
                problems.append((f"{where}:{m.name}", f"truncated: the shard ends {short} bytes before this member"))
                break
            last = m.name
            if m.isdir():
                continue
            member = f"{where}:{m.name}"
            if not m.isfile():
                problems.append((member, "not a regular file (a link or device); ignored"))
                continue
            folder, _, base = m.name.rpartition("/")
            if base.startswith(".") or "." not in base:
                problems.append((member, "no extension: a sample member is named KEY.EXTENSION; ignored"))
                continue
            stem, ext = base.split(".", 1)
            key, ext = f"{folder}/{stem}" if folder else stem, ext.lower()
            if current is None or key != current.key:
                close(current)
                current = None
                if key in seen:
                    problems.append((member, f"key {key!r} comes back after other samples (a sample's members "
                                             "must be consecutive); ignored"))
                    continue
                seen.add(key)
                current = _Open(key)
            if ext in images:
                if current.image is not None:
                    problems.append((member, f"a second image for key {key!r} (first: {current.image.name}); ignored"))
                else:
                    current.image = m
            elif ext == "txt" and current.caption is None:
                current.caption = _caption(tf, m)
                current.others = [*(current.others or []), m.name]
            elif ext == "cls" and current.label is None:
                current.label = _label(tf, m)
                current.others = [*(current.others or []), m.name]
            elif ext in ("txt", "cls"):
                problems.append((member, f"a second .{ext} for key {key!r}; ignored"))
            else:
                problems.append((member, f"unsupported member type {'.' + ext!r}; ignored"))
        close(current)


def _ends_properly(path: Path, offset: int, file_size: int) -> bool:
    """A tar ends with two zero blocks after its last member (the writer may pad more)."""
    if file_size < offset + 2 * _BLOCK:
        return False
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(2 * _BLOCK) == bytes(2 * _BLOCK)


def scan_shards(paths: list[Path]) -> tuple[list[ShardSample], Problems, bool, bool]:
    """Every usable sample of `paths` and every problem; reads captions and labels, not
    images. Returns (samples, problems, captioned, labelled): captioned when any sample has
    a `.txt` (then samples without one are reported and left out), likewise labelled."""
    samples: list[ShardSample] = []
    problems: Problems = []
    has: set[str] = set()
    for path in paths:
        _scan_one(Path(path), samples, problems, has)
    captioned, labelled = "txt" in has, "cls" in has
    kept = []
    for s in samples:
        stem = PurePosixPath(s.member).stem
        if captioned and s.caption is None:
            problems.append((s.key, f"no caption (no {stem}.txt)"))
        elif labelled and s.label is None:
            problems.append((s.key, f"no label (no {stem}.cls)"))
        else:
            kept.append(s)
    return kept, problems, captioned, labelled


def read_image_bytes(sample: ShardSample) -> bytes:
    with open(sample.shard, "rb") as f:
        f.seek(sample.offset)
        data = f.read(sample.size)
    if len(data) != sample.size:
        raise ValueError(f"{sample.key}: the shard changed since it was read (short read)")
    return data


def shard_labels(samples: list[ShardSample], names: list[str] | None, problems: Problems
                 ) -> tuple[list[ShardSample], list[str] | None]:
    """Check the samples' labels against `names` (from `classes.txt`; None: the numbers
    0..max): a label outside is reported and its sample left out."""
    labels = [s.label for s in samples if s.label is not None]
    if not labels:
        return samples, None
    if names is None:
        return samples, [str(i) for i in range(max(labels) + 1)]
    kept = []
    for s in samples:
        if s.label is not None and s.label >= len(names):
            problems.append((s.key, f"label {s.label} is outside the {len(names)} classes of {CLASSES_FILE}"))
        else:
            kept.append(s)
    return kept, names


def load_shards(spec: str | Path, *, channels: int | None = None, size: int | None = None, background: int = 255,
                max_pixels: int | None = None):
    """Load every usable sample of the shards `spec` names into memory, as
    `load_image_folder` does a folder: uint8 (N, C, size, size) through the shared decoder
    (`difforge.io.decode`), center-cropped and resized (`folder.fit_square`), with captions
    and labels when the shards have them. Returns (ImageDataset, [(where, reason)] of every
    problem); raises ValueError when no sample is usable."""
    import statistics

    from difforge.data.dataset import ImageDataset
    from difforge.data.folder import DEFAULT_MAX_SIZE, _error, fit_square, stack_pixels
    from difforge.io.decode import MAX_PIXELS, decode_image, open_image

    max_pixels = MAX_PIXELS if max_pixels is None else max_pixels
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be 1, 3 or None, got {channels!r}")
    paths = shard_paths(spec)
    samples, problems, _, _ = scan_shards(paths)
    samples, class_names = shard_labels(samples, read_class_names(paths), problems)
    if size is None:  # headers only: cheap
        sides, readable = [], []
        for s in samples:
            try:
                with open_image(read_image_bytes(s), max_pixels=max_pixels) as im:
                    sides.append(min(im.size))
                readable.append(s)
            except MemoryError:
                raise
            except Exception as e:  # never stop on one bad sample
                problems.append((s.key, _error(e)))
        samples = readable
        size = min(DEFAULT_MAX_SIZE, statistics.median_low(sides)) if sides else 1
    arrays, kept = [], []
    for s in samples:
        try:
            im, _, _ = decode_image(read_image_bytes(s), background=background, max_pixels=max_pixels, draft=size)
            arrays.append(fit_square(im, size, channels))
            kept.append(s)
        except MemoryError:
            raise
        except Exception as e:
            problems.append((s.key, _error(e)))
    if not arrays:
        first = f"; first: {problems[0][0]}: {problems[0][1]}" if problems else ""
        raise ValueError(f"no usable samples in {spec} ({len(problems)} problems{first})")
    import torch

    labelled = class_names is not None
    dataset = ImageDataset(
        images=stack_pixels(arrays, channels),
        labels=torch.tensor([s.label for s in kept], dtype=torch.int64) if labelled else None,
        class_names=class_names,
        name=shard_set_name(spec),
        captions=[s.caption for s in kept] if kept[0].caption is not None else None,
    )
    return dataset, problems


def shard_set_name(spec: str | Path) -> str:
    """A name for the shards `spec` names: the folder's, or the file name before any brace."""
    p = Path(str(spec).split("{")[0])
    return (p.stem if p.suffix == ".tar" else p.resolve().name) or "shards"


# ---------------------------------------------------------------- writing
def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tf.addfile(info, io.BytesIO(data))


def png_bytes(pixels) -> bytes:
    """uint8 (C, H, W) -> PNG bytes ("L" or "RGB"), the same bytes for the same pixels."""
    import numpy as np
    from PIL import Image

    a = np.asarray(pixels)
    im = Image.fromarray(np.ascontiguousarray(a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def write_shards(folder: Path, images, labels=None, captions: list[str] | None = None,
                 shard_size: int = DEFAULT_SHARD_SIZE) -> list[dict]:
    """Write samples `000000`, `000001`, ... (image, caption, label) into `folder`/000000.tar,
    000001.tar, ... of `shard_size` samples each; returns [{"file", "count", "sha256"}]
    per shard (file relative to `folder`)."""
    from difforge.runs import sha256_file

    if shard_size < 1:
        raise ValueError(f"shard size must be >= 1, got {shard_size}")
    if len(images):
        folder.mkdir(parents=True, exist_ok=True)
    out = []
    for first in range(0, len(images), shard_size):
        path = folder / f"{first // shard_size:06d}.tar"
        with open(path, "wb") as f, tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tf:
            for i in range(first, min(first + shard_size, len(images))):
                key = f"{i:06d}"
                _add(tf, f"{key}.png", png_bytes(images[i]))
                if captions is not None:
                    _add(tf, f"{key}.txt", captions[i].encode("utf-8"))
                if labels is not None:
                    _add(tf, f"{key}.cls", str(int(labels[i])).encode("ascii"))
        out.append({"file": path.name, "count": min(shard_size, len(images) - first), "sha256": sha256_file(path)})
    return out
