"""`difforge prepare --clip-frames N`: a folder of videos -> a store of fixed-size clips.

A source is a folder (or one video file) of
- video files (`VIDEO_EXTENSIONS`: .gif through Pillow, the others through PyAV, the
  `video` extra): each is one video;
- frame folders: a folder holding image files (PNG, JPEG, BMP, WebP, TIFF; a .gif is
  always a video) is one video whose frames are those files in natural order of their
  names (`frame2.png` before `frame10.png`).
Top-level sub-folders are classes, as for images: a video is labelled by the top-level
folder it lies in (a frame folder directly under the source is an unlabelled video, not
a class); when some videos are labelled, unlabelled ones are skipped with a reason.

Per video, in order:
1. decode frame by frame (`difforge.io.video.video_frames`; frame folders through the
   shared image decoder); a file that cannot be read, even part-way, is quarantined with a
   one-line reason and the others go on; nothing in the source is written;
2. content hash: SHA-256 over the content hashes (`hashing.content_hash`) of every decoded
   frame at full size, so it depends on the pixels only, not on --size, --fps or the clip
   options; identical videos are exact duplicates (the first in source order is kept);
3. frame rate (`fps`): output frame k is at time k / fps after the first frame and shows
   the source frame on screen then: the last one that starts at or before k / fps (frames
   are dropped when the source is faster, repeated when it is slower); output frames run
   while k / fps is before the end of the last source frame (its start plus its duration,
   else plus the previous frame's interval, else plus 1 / the stream's average rate). Times
   are exact fractions, so a 20 fps source at 10 fps keeps frames 0, 2, 4, ... exactly.
   Without `fps` every decoded frame is kept. Frame folders have no times: their frames
   are used one for one at any `fps`;
4. each kept frame is center-cropped and Lanczos-resized to size x size (`folder.fit_square`,
   as images are);
5. clips: frames [s, s + frames) for s = 0, stride, 2 stride, ... while they fit (stride
   `frames` by default: non-overlapping; the frames after the last whole clip are dropped);
   a video with fewer than `frames` output frames is reported as too short and skipped;
6. split by the video's content hash (`prepare.split_of`, as images): all clips of a video
   go to the same split, so no video is in two splits.
"""

from __future__ import annotations

import hashlib
import os
import re
import statistics
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from difforge.data.folder import DEFAULT_MAX_SIZE, IMAGE_EXTENSIONS, _error, fit_square
from difforge.data.hashing import content_hash
from difforge.data.prepare import SPLITS, PrepareConfig, Prepared, split_of
from difforge.io.video import READ_SUFFIXES, TimedFrame, video_frames

VIDEO_EXTENSIONS = frozenset(READ_SUFFIXES)
FRAME_EXTENSIONS = frozenset(IMAGE_EXTENSIONS - {".gif"})  # files of a frame folder
MAX_CLIP_FRAMES = 1024
# PrepareConfig fields that are about images only: --clip-frames refuses values other than these defaults
_IMAGE_ONLY = ("near_distance", "near_mae", "max_aspect", "min_side", "min_std", "outlier_z", "drop_outliers",
               "drop_near_duplicates")


@dataclass(frozen=True)
class ClipConfig:
    """How videos are cut into clips; recorded in the store's manifest."""

    frames: int  # frames per clip
    fps: float | None = None  # output frame rate; None: every decoded frame
    stride: int | None = None  # first frame of one clip to the next; None: `frames` (non-overlapping)

    def __post_init__(self) -> None:
        if not 1 <= self.frames <= MAX_CLIP_FRAMES:
            raise ValueError(f"--clip-frames must be in 1..{MAX_CLIP_FRAMES}, got {self.frames}")
        if self.fps is not None and not 0 < self.fps <= 1000:
            raise ValueError(f"--fps must be in (0, 1000], got {self.fps}")
        if self.stride is not None and self.stride < 1:
            raise ValueError(f"--clip-stride must be >= 1, got {self.stride}")

    @property
    def step(self) -> int:
        return self.stride or self.frames


@dataclass(frozen=True)
class VideoItem:
    """One candidate video: `key` names it for people (a path relative to the source; a
    frame folder's ends in "/"); `frames` lists a frame folder's files in order."""

    key: str
    label: str | None
    path: str
    frames: tuple[str, ...] | None = None


# ---------------------------------------------------------------- enumeration
def _natural(name: str) -> list:
    """Sort key: digit runs compared as numbers ("f2" before "f10")."""
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", name) if p]


def scan_videos(source: str | Path) -> tuple[Path, list[VideoItem], list[tuple[str, str]]]:
    """(root, candidate videos in source order, skipped (key, reason)) of a folder or one video file."""
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    if path.is_file():
        if path.suffix.lower() not in VIDEO_EXTENSIONS:
            raise ValueError(f"{path}: not a video file; expected a folder or one of {', '.join(READ_SUFFIXES)}")
        return path.parent, [VideoItem(path.name, None, str(path))], []
    root = path
    items: list[VideoItem] = []
    skipped: list[tuple[str, str]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        d = Path(dirpath)
        rel = d.relative_to(root)
        frames = []
        for name in sorted((n for n in filenames if not n.startswith(".")), key=_natural):
            f = d / name
            key = str(f.relative_to(root))
            suffix = f.suffix.lower()
            if suffix in VIDEO_EXTENSIONS:
                parts = Path(key).parts
                items.append(VideoItem(key, parts[0] if len(parts) > 1 else None, str(f)))
            elif suffix in FRAME_EXTENSIONS:
                frames.append(str(f))
            else:
                skipped.append((key, f"unsupported file type {suffix or '(none)'!r}"))
        if frames:
            key = f"{rel}/" if rel.parts else "./"
            items.append(VideoItem(key, rel.parts[0] if len(rel.parts) > 1 else None, str(d), tuple(frames)))
    if any(it.label is not None for it in items):  # class sub-folders: loose videos are ignored
        skipped += [(it.key, "not inside a class sub-folder") for it in items if it.label is None]
        items = [it for it in items if it.label is not None]
    items.sort(key=lambda it: (it.label or "", _natural(it.key)))
    return root, items, skipped


# ---------------------------------------------------------------- decoding (runs in workers)
def _timed_frames(item: VideoItem, background: int, max_pixels: int) -> Iterator[TimedFrame]:
    if item.frames is None:
        yield from video_frames(item.path, max_pixels=max_pixels, background=background)
        return
    from difforge.io.decode import decode_image

    for f in item.frames:
        try:
            im, _, _ = decode_image(f, background=background, max_pixels=max_pixels)
        except ValueError as e:
            raise ValueError(f"frame {Path(f).name}: {e}") from None
        yield TimedFrame(None, None, im)


def resample(frames: Iterator[TimedFrame], fps: Fraction | None, rate: Fraction | None = None
             ) -> Iterator[tuple[int, TimedFrame]]:
    """(source frame index, source frame) for output frames 0, 1, ... by the rule of the module
    docstring (`rate`: the stream's average rate, the last resort for the last frame's
    duration), streaming: a source frame is released once the next one's start is known.
    A frame that starts no later than the one before it is never shown."""
    if fps is None:
        yield from enumerate(frames)
        return
    k = 0
    prev: tuple[int, TimedFrame] | None = None
    prev_gap: Fraction | None = None
    for i, f in enumerate(frames):
        if f.start is None:  # no times (a frame folder): one for one
            yield i, f
            k += 1
            continue
        if prev is not None:
            while Fraction(k) / fps < f.start:  # output times in [prev start, this start)
                yield prev
                k += 1
            if f.start > prev[1].start:
                prev_gap = f.start - prev[1].start
        prev = (i, f)
    if prev is not None:
        last = prev[1].duration or prev_gap or (1 / rate if rate else 1 / fps)
        while Fraction(k) / fps < prev[1].start + last:
            yield prev
            k += 1


def _video_rate(item: VideoItem) -> Fraction | None:
    """The stream's average frame rate (PyAV files), None for GIFs and frame folders."""
    if item.frames is not None or Path(item.path).suffix.lower() == ".gif":
        return None
    try:
        import av

        with av.open(item.path) as c:
            return Fraction(c.streams.video[0].average_rate) if c.streams.video and \
                c.streams.video[0].average_rate else None
    except Exception:  # reported when decoded
        return None


def decode_video(item: VideoItem, size: int, channels: int | None, fps: float | None, background: int,
                 max_pixels: int) -> tuple:
    """-> ("ok", frames [uint8 (S, S) or (S, S, 3)], sha256, width, height, mode, source frames,
    source fps or None) or ("error", reason)."""
    from PIL import Image

    try:
        rate = _video_rate(item)
        target = None if fps is None else Fraction(str(fps))
        h = hashlib.sha256()
        count, width, height, mode = 0, 0, 0, "L"
        out: list[np.ndarray] = []
        last: tuple[int, np.ndarray] | None = None  # (index of the source frame, its fitted pixels): repeats

        def counted(frames):
            nonlocal count, width, height, mode
            for f in frames:
                im: Image.Image = f.image
                h.update(content_hash(np.asarray(im)).encode())
                if count == 0:
                    width, height = im.size
                mode = "RGB" if im.mode == "RGB" else mode
                count += 1
                yield f

        for i, f in resample(counted(_timed_frames(item, background, max_pixels)), target, rate):
            if last is None or last[0] != i:
                last = (i, fit_square(f.image, size, channels))
            out.append(last[1])
        if count == 0:
            return ("error", "no frames")
        return ("ok", out, h.hexdigest(), width, height, mode, count, None if rate is None else float(rate))
    except MemoryError:
        raise
    except Exception as e:  # one bad file never stops preparation
        msg = str(e).strip().splitlines()[0] if isinstance(e, ValueError) and str(e).strip() else _error(e)
        return ("error", msg.replace(f"cannot read video {item.path}: ", ""))


def _decode_all(items: list[VideoItem], size: int, fps, cfg, progress: bool) -> list[tuple]:
    from functools import partial

    from tqdm.auto import tqdm

    work = partial(decode_video, size=size, channels=cfg.channels, fps=fps, background=cfg.background,
                   max_pixels=cfg.max_pixels)
    bar = dict(total=len(items), desc="decode", unit="video", disable=not progress, dynamic_ncols=True)
    if cfg.workers <= 1:
        return [work(it) for it in tqdm(items, **bar)]
    import multiprocessing as mp
    import sys

    with mp.get_context("fork" if sys.platform.startswith("linux") else "spawn").Pool(cfg.workers) as pool:
        return list(tqdm(pool.imap(work, items), **bar))


def _probe_side(item: VideoItem, max_pixels: int) -> int | None:
    """The shorter side of a video's frames (headers / the first frame only), None when unreadable."""
    try:
        if item.frames is not None or Path(item.path).suffix.lower() == ".gif":
            from difforge.io.decode import open_image

            with open_image(item.frames[0] if item.frames else item.path, max_pixels=max_pixels) as im:
                return min(im.size)
        import av

        with av.open(item.path) as c:
            cc = c.streams.video[0].codec_context
            return min(cc.width, cc.height) or None
    except Exception:  # reported when decoded
        return None


# ---------------------------------------------------------------- the pipeline
def prepare_clips_store(source: str | Path, out_dir: str | Path, cfg: PrepareConfig, clips: ClipConfig, *,
                        overwrite: bool = False, progress: bool = True, log: Callable[[str], None] = print
                        ) -> tuple[Path, Prepared]:
    """`prepare_clips` then `store.write_store` (arrays); the output folder is checked first."""
    from difforge.data.store import check_out_dir, write_store

    check_out_dir(out_dir, overwrite)
    result = prepare_clips(source, cfg, clips, progress=progress, log=log)
    return write_store(result, out_dir, overwrite=overwrite), result


def prepare_clips(source: str | Path, cfg: PrepareConfig, clips: ClipConfig, *, progress: bool = True,
                  log: Callable[[str], None] = print) -> Prepared:
    """A `prepare.Prepared` of clips (arrays uint8 (N, C, T, S, S)) from the videos of
    `source`, with `cfg` (a `prepare.PrepareConfig`: size, channels, split fractions and
    seed, background, pixel limit, workers) and `clips`."""
    from difforge.data.sources import _label_order

    defaults = PrepareConfig()
    changed = [k for k in _IMAGE_ONLY if getattr(cfg, k) != getattr(defaults, k)]
    if changed:
        raise ValueError(f"{', '.join(changed)}: near-duplicate and outlier checks are for images; "
                         "they do not apply with --clip-frames")
    root, items, skipped = scan_videos(source)
    if not items:
        first = f"; first skipped: {skipped[0][0]}: {skipped[0][1]}" if skipped else ""
        raise ValueError(f"{source}: no candidate videos ({len(skipped)} files skipped{first}); expected video "
                         f"files ({', '.join(READ_SUFFIXES)}) or folders of frame images")
    size = cfg.size
    if size is None:
        sides = [s for s in (_probe_side(it, cfg.max_pixels) for it in items) if s]
        size = max(4, min(DEFAULT_MAX_SIZE, statistics.median_low(sides))) if sides else DEFAULT_MAX_SIZE
    log(f"{len(items)} candidate videos in {root} ({len(skipped)} other files); size {size}, "
        f"clips of {clips.frames} frames every {clips.step}" + (f" at {clips.fps:g} fps" if clips.fps else ""))
    decoded = _decode_all(items, size, clips.fps, cfg, progress)

    quarantined = [{"source": k, "reason": r} for k, r in skipped]
    duplicates, too_short = [], []
    first: dict[str, int] = {}
    kept: list[int] = []
    for i, (item, r) in enumerate(zip(items, decoded)):
        if r[0] == "error":
            quarantined.append({"source": item.key, "reason": r[1]})
            continue
        j = first.setdefault(r[2], i)
        if j != i:
            dup = {"source": item.key, "duplicate_of": items[j].key, "sha256": r[2]}
            if item.label != items[j].label:
                dup["label_conflict"] = [items[j].label, item.label]
            duplicates.append(dup)
        elif len(r[1]) < clips.frames:
            too_short.append({"source": item.key, "frames": len(r[1]), "needed": clips.frames})
        else:
            kept.append(i)
    if not kept:
        why = (f"; first quarantined: {quarantined[0]['source']}: {quarantined[0]['reason']}" if quarantined else "")
        short = f", {len(too_short)} shorter than {clips.frames} frames" if too_short else ""
        raise ValueError(f"{source}: no usable videos ({len(quarantined)} quarantined{short}{why})")

    channels = cfg.channels or (1 if all(_gray(f) for i in kept for f in decoded[i][1]) else 3)
    class_names = None
    if items[kept[0]].label is not None:
        class_names = _label_order({items[i].label for i in kept})
    per_split: dict[str, list] = {s: [] for s in SPLITS}
    for i in kept:
        item, r = items[i], decoded[i]
        split = split_of(r[2], cfg.val_fraction, cfg.test_fraction, cfg.split_seed)
        frames = np.stack([_channels(f, channels) for f in r[1]])  # (T, C, S, S)
        for s in range(0, len(frames) - clips.frames + 1, clips.step):
            per_split[split].append((item, r, s, frames[s : s + clips.frames].transpose(1, 0, 2, 3)))
    arrays, labels, columns = {}, ({} if class_names else None), {}
    for split, rows in per_split.items():
        arrays[split] = (np.ascontiguousarray(np.stack([c for *_, c in rows])) if rows
                         else np.zeros((0, channels, clips.frames, size, size), np.uint8))
        if class_names:
            labels[split] = np.array([class_names.index(it.label) for it, *_ in rows], np.int64)
        columns[split] = {
            "source": [it.key for it, *_ in rows],
            "sha256": [r[2] for _, r, *_ in rows],
            "start": [s for _, _, s, _ in rows],
            "width": [int(r[3]) for _, r, *_ in rows],
            "height": [int(r[4]) for _, r, *_ in rows],
            "mode": [r[5] for _, r, *_ in rows],
            "source_fps": [r[7] for _, r, *_ in rows],
        }
    rates = {decoded[i][7] for i in kept}
    fps = clips.fps if clips.fps is not None else (rates.pop() if len(rates) == 1 else None)
    settings = ({k: v for k, v in asdict(cfg).items() if k not in ("workers", *_IMAGE_ONLY)}
                | {"size": size, "channels": channels, "clip_frames": clips.frames, "fps": clips.fps,
                   "clip_stride": clips.step})
    n_kept = sum(len(a) for a in arrays.values())
    report = {
        "kind": "clips",
        "candidates": len(items) + len(skipped),
        "decoded": sum(1 for r in decoded if r[0] == "ok"),
        "videos_kept": len(kept),
        "kept": n_kept,
        "quarantined": quarantined,
        "duplicates": duplicates,
        "too_short": too_short,
        "stored_modes": dict(Counter(decoded[i][5] for i in kept)),
        "source_frames": {items[i].key: decoded[i][6] for i in kept},
    }
    return Prepared(arrays, labels, columns, class_names, settings,
                    {"path": str(Path(source).resolve()), "kind": "videos"}, report,
                    clips={"frames": clips.frames, "fps": fps, "stride": clips.step})


def _gray(a: np.ndarray) -> bool:
    return a.ndim == 2 or bool((a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all())


def _channels(a: np.ndarray, channels: int) -> np.ndarray:
    """A fitted frame uint8 (S, S) or (S, S, 3) -> (channels, S, S); an RGB frame reaches
    channels 1 only when gray (equal channels: `fit_square` converted the others)."""
    if channels == 1:
        return (a[..., 0] if a.ndim == 3 else a)[None]
    return (np.repeat(a[None], 3, 0) if a.ndim == 2 else a.transpose(2, 0, 1))


def clip_summary(p) -> str:
    """What `prepare` did with videos, in one line."""
    r = p.report
    counts = ", ".join(f"{k} {len(v)}" for k, v in p.arrays.items())
    return (f"kept {r['kept']} clips of {r['videos_kept']} videos ({counts}); quarantined {len(r['quarantined'])}, "
            f"duplicates removed {len(r['duplicates'])}, too short {len(r['too_short'])}")
