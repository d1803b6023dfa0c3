"""`difforge prepare`: from a messy source to a clean, split, fixed-size dataset.

Steps, in order:
1. enumerate the source (`sources.open_source`) and decode every candidate with the
   shared image decoder (`difforge.io.decode`): unusable files are quarantined with the
   decoder's reason, never fatal;
2. exact duplicates: identical content hash of the decoded pixels (`hashing.content_hash`);
   the first in source order is kept, the others removed and reported;
3. resize / center-crop to `size` x `size` and `channels` (`folder.fit_square`);
4. split by content hash: u = SHA-256(seed, hash) as a number in [0, 1) puts an image in
   test (u < test), val (u < test + val) or train. A file's split depends on its own
   pixels only, so it never moves when files are added or removed; every class is split
   with the same fractions (stratified in expectation: a class of n images deviates by
   the binomial sqrt(n p (1 - p)));
5. near duplicates: pairs of kept images whose perceptual hashes (`hashing.phash`) are at
   most `near_distance` bits apart and whose 32x32 grayscale thumbnails, each minus its
   mean (so a brightness change does not count), differ by at most `near_mae` gray levels
   on average; reported with their splits (a pair across splits leaks between train and
   evaluation); with `drop_near_duplicates` the later file of each pair (in source order)
   is removed. The hash alone over-reports on sets of look-alike objects: on
   Fashion-MNIST 4 bits give 190 000 pairs of similar trousers and sneakers;
6. outliers, flagged (and removed with `drop_outliers`): extreme aspect ratio, tiny
   (shorter side below `min_side`), nearly constant (pixel std below `min_std`), and far
   from the rest: the distance of an image's 8x8 grayscale thumbnail to its class's mean
   thumbnail, as a robust z-score (median / MAD within the class) above `outlier_z`.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import statistics
import time
import zipfile
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from difforge.data.captions import caption_stats
from difforge.data.folder import DEFAULT_MAX_SIZE
from difforge.data.hashing import THUMB, content_hash, near_pairs, pair_work, phash
from difforge.data.sources import MAX_MEMBER_BYTES, Source, SourceItem, open_source
from difforge.io.decode import MAX_PIXELS

SPLITS = ("train", "val", "test")
HASH_DRAFT = 512  # JPEGs decode at the smallest 1/2, 1/4 or 1/8 scale that keeps >= this many pixels
MAX_REPORTED_PAIRS = 5000  # near-duplicate pairs listed in the report (all are counted)
_MIN_GROUP_FOR_Z = 20  # classes smaller than this get no "far from the rest" flag


@dataclass(frozen=True)
class PrepareConfig:
    """How `prepare` cleans, shapes and splits. Recorded in the store's manifest."""

    size: int | None = None  # square side; None: median shorter side, capped at 64
    channels: int | None = None  # 1 or 3; None: 1 when every image is grayscale
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    split_seed: int = 0  # changes every split assignment (still stable under additions)
    near_distance: int = 4  # pHash bits; 0 finds only perceptually identical pictures
    near_mae: float = 4.0  # and mean-centred thumbnail difference (gray levels 0..255) at most this
    max_aspect: float = 3.0  # longer / shorter side above this is flagged
    min_side: int | None = None  # shorter side below this is flagged; None: size // 2
    min_std: float = 2.0  # pixel standard deviation (0..255) below this is "nearly constant"
    outlier_z: float = 8.0  # robust z of the distance to the class's mean thumbnail
    drop_outliers: bool = False
    drop_near_duplicates: bool = False  # remove the later file of each near-duplicate pair
    background: int = 255  # gray level transparent pixels are composited over
    max_pixels: int = MAX_PIXELS  # decompression-bomb limit per image
    workers: int = 0  # decoding processes; 0: one per core for large sources

    def __post_init__(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ValueError(msg)

        need(self.size is None or 4 <= self.size <= 1024, f"size must be in 4..1024, got {self.size}")
        need(self.channels in (None, 1, 3), f"channels must be 1 or 3, got {self.channels}")
        need(0 <= self.val_fraction < 1 and 0 <= self.test_fraction < 1, "split fractions must be in [0, 1)")
        need(self.val_fraction + self.test_fraction < 1, "val + test fractions must leave some training data")
        need(0 <= self.near_distance <= 32, f"near_distance must be in 0..32 bits, got {self.near_distance}")
        need(self.near_mae >= 0, f"near_mae must be >= 0, got {self.near_mae}")
        need(self.max_aspect >= 1, f"max_aspect must be >= 1, got {self.max_aspect}")
        need(self.outlier_z > 0, f"outlier_z must be > 0, got {self.outlier_z}")
        need(0 <= self.background <= 255, f"background must be in 0..255, got {self.background}")
        need(self.workers >= 0, f"workers must be >= 0, got {self.workers}")


@dataclass
class Prepared:
    """The result: arrays per split plus everything the manifest and report record."""

    arrays: dict[str, np.ndarray]  # split -> uint8 (N, C, S, S)
    labels: dict[str, np.ndarray] | None  # split -> int64 (N,), None when unlabelled
    items: dict[str, dict[str, list]]  # split -> columns (source, sha256, phash, width, height, mode[, caption])
    class_names: list[str] | None
    settings: dict
    source: dict  # path and kind
    report: dict = field(default_factory=dict)  # quarantined, duplicates, near duplicates, outliers
    clips: dict | None = None  # a store of clips (`video_prepare`): frames, fps, stride; arrays (N, C, T, S, S)


# ---------------------------------------------------------------- decoding (runs in workers)
_ZIPS: dict[str, zipfile.ZipFile] = {}


def _member_bytes(zip_path: str, member: str) -> bytes:
    zf = _ZIPS.get(zip_path)
    if zf is None:
        zf = _ZIPS[zip_path] = zipfile.ZipFile(zip_path)
    with zf.open(member) as f:
        data = f.read(MAX_MEMBER_BYTES + 1)
    if len(data) > MAX_MEMBER_BYTES:
        raise ValueError(f"member decompresses to over {MAX_MEMBER_BYTES} bytes (zip bomb?)")
    return data


def _item_file(item: SourceItem):
    """Where the decoder reads an item: a path, or the bytes of a zip member or shard sample."""
    if item.member is not None:
        return io.BytesIO(_member_bytes(item.path, item.member))
    if item.span is not None:
        with open(item.path, "rb") as f:
            f.seek(item.span[0])
            return io.BytesIO(f.read(item.span[1]))
    return Path(item.path)


def _decode_one(item: SourceItem, size: int, channels: int | None, background: int, max_pixels: int,
                arrays: dict[str, np.ndarray] | None = None) -> tuple:
    """-> ("ok", pixels, sha256, thumb, width, height, mode) or ("error", reason)."""
    from PIL import Image

    from difforge.data.folder import _error, fit_square
    from difforge.io.decode import decode_image

    try:
        if item.row is not None:
            im = Image.fromarray(arrays[item.path][item.row], mode="L")
            stored, mode = im.size, "L"
        else:
            src = _item_file(item)
            draft = max(HASH_DRAFT, size)  # a property of the file (and of sizes over 512), not of other files
            im, stored, mode = decode_image(src, background=background, max_pixels=max_pixels, draft=draft)
        sha = content_hash(np.asarray(im))
        thumb = np.asarray(im.convert("L").resize((THUMB, THUMB), Image.Resampling.BILINEAR, reducing_gap=2.0))
        pixels = fit_square(im, size, channels)
        return ("ok", pixels, sha, thumb, stored[0], stored[1], mode)
    except MemoryError:
        raise
    except Exception as e:  # one bad file never stops preparation
        reason = _error(e)
        if item.member is not None or item.span is not None:  # name the member, not the in-memory file object
            reason = re.sub(r"<_io\.BytesIO object at 0x[0-9a-f]+>", repr(item.member or item.key), reason)
        return ("error", reason)


def _decode_all(src: Source, cfg: PrepareConfig, size: int, progress: bool) -> list[tuple]:
    from tqdm.auto import tqdm

    work = partial(_decode_one, size=size, channels=cfg.channels, background=cfg.background,
                   max_pixels=cfg.max_pixels)
    workers = cfg.workers or ((os.cpu_count() or 1) if len(src.items) >= 5000 else 1)
    bar = dict(total=len(src.items), desc="decode", unit="img", disable=not progress, dynamic_ncols=True)
    if src.kind == "idx" or workers == 1:  # idx pixels are already in memory
        return [work(it, arrays=src.arrays) for it in tqdm(src.items, **bar)]
    import multiprocessing as mp
    import sys

    # fork is safe here (no torch op has started its thread pool yet) and starts instantly
    with mp.get_context("fork" if sys.platform.startswith("linux") else "spawn").Pool(workers) as pool:
        return list(tqdm(pool.imap(work, src.items, chunksize=64), **bar))


def _default_size(src: Source, cfg: PrepareConfig) -> int:
    """Median shorter side of up to 2000 evenly spaced candidates, capped at 64."""
    if src.kind == "idx":
        return min(next(iter(src.arrays.values())).shape[1:])
    from difforge.io.decode import open_image

    step = max(1, len(src.items) // 2000)
    sides = []
    for it in src.items[::step]:  # headers only
        try:
            with open_image(_item_file(it), max_pixels=cfg.max_pixels) as im:
                sides.append(min(im.size))
        except MemoryError:
            raise
        except Exception:  # reported when decoded
            pass
    return max(4, min(DEFAULT_MAX_SIZE, statistics.median_low(sides))) if sides else DEFAULT_MAX_SIZE


# ---------------------------------------------------------------- splitting and flags
def split_of(sha256: str, val_fraction: float, test_fraction: float, seed: int = 0) -> str:
    """The split of an image with this content hash: depends on nothing else."""
    u = int.from_bytes(hashlib.sha256(f"{seed}:{sha256}".encode()).digest()[:8], "big") / 2**64
    return "test" if u < test_fraction else "val" if u < test_fraction + val_fraction else "train"


def far_scores(thumbs: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Robust z-score of each image's distance to its group's mean 8x8 thumbnail.

    thumbs uint8 (N, 32, 32) -> 8x8 block means in [0, 1]; within each group,
    z = (d - median(d)) / (1.4826 MAD(d)). Groups under 20 images get z = 0.
    """
    x = thumbs.astype(np.float32).reshape(len(thumbs), 8, THUMB // 8, 8, THUMB // 8).mean((2, 4)) / 255
    x = x.reshape(len(x), 64)
    z = np.zeros(len(x))
    for g in np.unique(groups):
        idx = np.nonzero(groups == g)[0]
        if len(idx) < _MIN_GROUP_FOR_Z:
            continue
        d = np.linalg.norm(x[idx] - x[idx].mean(0), axis=1)
        med = np.median(d)
        mad = 1.4826 * np.median(np.abs(d - med))
        z[idx] = (d - med) / max(mad, 1e-6)
    return z


def centred_mae(thumbs: np.ndarray, pairs: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """Mean |(a - mean a) - (b - mean b)| over the thumbnails of each pair (i, j, ...)."""
    x = thumbs.reshape(len(thumbs), -1).astype(np.float32)
    x -= x.mean(axis=1, keepdims=True)
    out = np.empty(len(pairs), np.float32)
    for k in range(0, len(pairs), chunk):
        p = pairs[k : k + chunk]
        out[k : k + chunk] = np.abs(x[p[:, 0]] - x[p[:, 1]]).mean(axis=1)
    return out


def _flags(cfg: PrepareConfig, size: int, w: np.ndarray, h: np.ndarray, std: np.ndarray, z: np.ndarray,
           label_names: list[str | None]) -> list[list[str]]:
    min_side = cfg.min_side if cfg.min_side is not None else size // 2
    out = []
    for i in range(len(w)):
        f = []
        aspect = max(w[i], h[i]) / min(w[i], h[i])
        if aspect > cfg.max_aspect:
            f.append(f"extreme aspect ratio: {aspect:.1f} ({w[i]}x{h[i]})")
        if min(w[i], h[i]) < min_side:
            f.append(f"tiny: {w[i]}x{h[i]}, shorter side under {min_side}")
        if std[i] < cfg.min_std:
            f.append(f"nearly constant: pixel std {std[i]:.2f}")
        if z[i] > cfg.outlier_z:
            where = f"class {label_names[i]!r}, " if label_names[i] is not None else ""
            f.append(f"far from the rest: {where}robust z {z[i]:.1f}")
        out.append(f)
    return out


# ---------------------------------------------------------------- the pipeline
def _first_copies(src, decoded) -> tuple[list[int], list[dict], list[dict]]:
    """Indices of the first copy of each decodable image (by pixel hash), the quarantined
    files with their reasons, and the exact duplicates removed (label conflicts noted)."""
    quarantined = [{"source": k, "reason": r} for k, r in src.skipped]
    duplicates = []
    first: dict[str, int] = {}
    kept: list[int] = []
    for i, (item, r) in enumerate(zip(src.items, decoded)):
        if r[0] == "error":
            quarantined.append({"source": item.key, "reason": r[1]})
            continue
        j = first.setdefault(r[2], i)
        if j == i:
            kept.append(i)
            continue
        dup = {"source": item.key, "duplicate_of": src.items[j].key, "sha256": r[2]}
        if item.label != src.items[j].label:
            dup["label_conflict"] = [src.items[j].label, item.label]
        if item.caption != src.items[j].caption:
            dup["caption_conflict"] = [src.items[j].caption, item.caption]
        duplicates.append(dup)
    if not kept:
        first_bad = f"; first: {quarantined[0]['source']}: {quarantined[0]['reason']}" if quarantined else ""
        raise ValueError(f"{src.root}: no usable images ({len(quarantined)} quarantined{first_bad})")
    return kept, quarantined, duplicates


def _stack(recs: list, channels: int) -> np.ndarray:
    """The decoded images as one contiguous uint8 array (N, channels, S, S)."""
    if channels == 1:
        images = np.stack([r[1] if r[1].ndim == 2 else r[1][..., 0] for r in recs])[:, None]  # (N, 1, S, S)
    else:
        images = np.stack([np.repeat(r[1][..., None], 3, 2) if r[1].ndim == 2 else r[1] for r in recs])
        images = images.transpose(0, 3, 1, 2)  # (N, S, S, 3) -> (N, 3, S, S)
    return np.ascontiguousarray(images)


def _near_duplicates(cfg: PrepareConfig, hashes: np.ndarray, thumbs: np.ndarray, keep: np.ndarray, items: list,
                     splits: np.ndarray, progress: bool, log: Callable[[str], None]) -> dict:
    """Near-duplicate pairs among the kept images (pHash candidates confirmed by thumbnail
    difference), pairs across splits first; with `drop_near_duplicates`, the later file of
    each pair is dropped from `keep` (in place)."""
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    with tqdm(total=pair_work(len(hashes)), desc="near duplicates", unit="cmp", unit_scale=True,
              disable=not progress, dynamic_ncols=True) as bar:
        pairs = near_pairs(hashes, cfg.near_distance, on_work=bar.update)
    pairs = pairs[keep[pairs[:, 0]] & keep[pairs[:, 1]]] if len(pairs) else pairs
    mae = centred_mae(thumbs, pairs)
    log(f"near-duplicate search: {len(pairs)} hash candidates, {int((mae <= cfg.near_mae).sum())} confirmed "
        f"in {time.perf_counter() - t0:.1f} s")
    pairs, mae = pairs[mae <= cfg.near_mae], mae[mae <= cfg.near_mae]
    cross = splits[pairs[:, 0]] != splits[pairs[:, 1]] if len(pairs) else np.zeros(0, bool)
    order = np.lexsort((pairs[:, 1], pairs[:, 0], mae, ~cross)) if len(pairs) else []  # across splits first
    near = {
        "max_distance": cfg.near_distance,
        "max_mae": cfg.near_mae,
        "pairs_found": int(len(pairs)),
        "pairs_across_splits": int(cross.sum()),
        "images_involved": int(len(np.unique(pairs[:, :2]))) if len(pairs) else 0,
        "pairs": [
            {"a": items[a].key, "b": items[b].key, "distance": int(d), "mae": round(float(m), 2),
             "splits": [str(splits[a]), str(splits[b])]}
            for (a, b, d), m in ((pairs[k], mae[k]) for k in order[:MAX_REPORTED_PAIRS])
        ],
    }
    if cfg.drop_near_duplicates:  # pairs are sorted by (a, b): the first file of each pair stays
        near["removed"] = []
        for a, b, _ in pairs.tolist():
            if keep[a] and keep[b]:
                keep[b] = False
                near["removed"].append({"source": items[b].key, "near": items[a].key, "split": str(splits[b])})
    return near


def prepare(source: str | Path, cfg: PrepareConfig = PrepareConfig(), *, progress: bool = True,
            log: Callable[[str], None] = print) -> Prepared:
    """Run every step on `source` and return the result in memory (see `store.write_store`)."""
    src = open_source(source)
    size = cfg.size or _default_size(src, cfg)
    log(f"{len(src.items)} candidate images in {src.kind} {src.root} ({len(src.skipped)} other files); size {size}")
    t0 = time.perf_counter()
    decoded = _decode_all(src, cfg, size, progress)
    log(f"decoded in {time.perf_counter() - t0:.1f} s")

    kept, quarantined, duplicates = _first_copies(src, decoded)
    recs = [decoded[i] for i in kept]
    items = [src.items[i] for i in kept]
    channels = cfg.channels or (1 if all(r[1].ndim == 2 or _gray(r[1]) for r in recs) else 3)
    images = _stack(recs, channels)
    shas = [r[2] for r in recs]
    thumbs = np.stack([r[3] for r in recs])
    w = np.array([r[4] for r in recs])
    h = np.array([r[5] for r in recs])
    modes = [r[6] for r in recs]
    hashes = phash(thumbs)

    class_names = src.class_names
    if class_names is not None and src.kind != "idx":  # classes whose images all failed are dropped
        present = {it.label for it in items}
        class_names = [c for c in class_names if c in present]
    labels = None if class_names is None else np.array([class_names.index(it.label) for it in items], np.int64)
    splits = np.array([split_of(s, cfg.val_fraction, cfg.test_fraction, cfg.split_seed) for s in shas])

    std = images.reshape(len(images), -1).std(axis=1)
    z = far_scores(thumbs, labels if labels is not None else np.zeros(len(items), np.int64))
    flags = _flags(cfg, size, w, h, std, z, [it.label for it in items])
    outliers = [{"source": it.key, "split": str(s), "reasons": f} for it, s, f in zip(items, splits, flags) if f]
    keep = np.array([not (cfg.drop_outliers and f) for f in flags], dtype=bool)

    near = _near_duplicates(cfg, hashes, thumbs, keep, items, splits, progress, log)  # may clear `keep` entries

    arrays, label_arrays, columns = {}, ({} if labels is not None else None), {}
    for split in SPLITS:
        idx = np.nonzero((splits == split) & keep)[0]
        arrays[split] = images[idx]
        if labels is not None:
            label_arrays[split] = labels[idx]
        columns[split] = {
            "source": [items[i].key for i in idx],
            "sha256": [shas[i] for i in idx],
            "phash": [f"{int(hashes[i]):016x}" for i in idx],
            "width": [int(w[i]) for i in idx],
            "height": [int(h[i]) for i in idx],
            "mode": [modes[i] for i in idx],
        }
        if src.captioned:
            columns[split]["caption"] = [items[i].caption for i in idx]
    settings = {k: v for k, v in asdict(cfg).items() if k != "workers"} | {"size": size, "channels": channels}
    report = {
        "candidates": len(src.items) + len(src.skipped),
        "decoded": len(src.items) - sum(1 for r in decoded if r[0] == "error"),
        "kept": int(keep.sum()),
        "quarantined": quarantined,
        "duplicates": duplicates,
        "near_duplicates": near,
        "outliers": outliers,
        "outliers_removed": bool(cfg.drop_outliers),
        "stored_modes": dict(Counter(modes)),
    }
    if src.captioned:  # the kept images' captions, and the caption problems of the source
        report["captions"] = caption_stats([items[i].caption for i in np.nonzero(keep)[0]],
                                           [r for _, r in src.skipped])
    return Prepared(arrays, label_arrays, columns, class_names, settings,
                    {"path": str(Path(source).resolve()), "kind": src.kind}, report)


def prepare_store(source: str | Path, out_dir: str | Path, cfg: PrepareConfig = PrepareConfig(), *,
                  overwrite: bool = False, progress: bool = True, log: Callable[[str], None] = print,
                  layout: str = "arrays", shard_size: int | None = None) -> tuple[Path, Prepared]:
    """`prepare` then `store.write_store` (`layout` "arrays" or "shards" of `shard_size`
    samples); the output folder and the layout are checked before any work."""
    from difforge.data.store import LAYOUTS, check_out_dir, write_store

    if layout not in LAYOUTS:
        raise ValueError(f"unknown store layout {layout!r}; expected one of {list(LAYOUTS)}")
    if shard_size is not None and (layout != "shards" or shard_size < 1):
        raise ValueError(f"--shard-size {shard_size}: " + ("must be >= 1" if layout == "shards"
                                                           else "applies to --format shards only"))
    check_out_dir(out_dir, overwrite)
    result = prepare(source, cfg, progress=progress, log=log)
    return write_store(result, out_dir, overwrite=overwrite, layout=layout, shard_size=shard_size), result


def _gray(a: np.ndarray) -> bool:
    return bool((a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all())
