"""`difforge inspect`: what a prepared store (or a source, prepared in memory) holds.

The report: counts per class and split, stored sizes and colour modes, pixel statistics
per channel, what preparation removed (quarantined files, exact duplicates) and flagged
(near duplicates, across splits too; outliers), each with its reason. Contact sheets: one
PNG per class (up to 64 images, chosen by content hash: a stable, unbiased sample), plus
one of flagged outliers and one of near-duplicate pairs side by side.
"""

from __future__ import annotations

import re
import statistics
from collections import Counter
from pathlib import Path

import numpy as np

from difforge.data.captions import caption_stats_lines
from difforge.data.prepare import SPLITS, Prepared
from difforge.data.store import load_split_arrays, read_manifest, read_report

SHEET_IMAGES = 64
SHEET_CELL = 56  # small images are enlarged (nearest) to about this many pixels


def _reason_kind(reason: str) -> str:
    """A quarantine reason without its file path, so that reasons group."""
    return re.sub(r"'[^']*[/\\][^']*'", "FILE", reason)


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]


def _stats(values: list[int]) -> str:
    return f"min {min(values)}, median {statistics.median_low(values)}, max {max(values)}" if values else "none"


def _channel_stats(arrays: list[np.ndarray], chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation over uint8 (N, C, H, W) arrays, in chunks
    (exact: integer sums of x and x^2)."""
    if not arrays:
        return np.zeros(0), np.zeros(0)
    c = arrays[0].shape[1]
    s1, s2, n = np.zeros(c), np.zeros(c), 0
    for a in arrays:
        for i in range(0, len(a), chunk):
            x = np.moveaxis(np.asarray(a[i : i + chunk]), 1, 0).reshape(c, -1).astype(np.int64)  # clips too
            s1 += x.sum(axis=1)
            s2 += (x * x).sum(axis=1)
            n += x.shape[1]
    mean = s1 / n
    return mean, np.sqrt(np.maximum(s2 / n - mean**2, 0))


def summary(p: Prepared, max_examples: int = 5) -> list[str]:
    """The report as lines of text."""
    r, s = p.report, p.settings
    lines = [f"source: {p.source['path']} ({p.source['kind']})",
             f"stored: {s['size']}x{s['size']}, {s['channels']} channel(s); splits val {s['val_fraction']:g}, "
             f"test {s['test_fraction']:g} by content hash (seed {s['split_seed']})"]
    if p.clips is not None:
        fps = f" at {p.clips['fps']:g} fps" if p.clips["fps"] else ""
        lines.append(f"clips of {p.clips['frames']} frames{fps}, a clip every {p.clips['stride']} frames; "
                     "counts below are clips, sizes and modes of their videos")
    if r:
        lines.append(f"candidates {r['candidates']}, decoded {r['decoded']}, kept {r['kept']}")
    counts = {k: len(v) for k, v in p.arrays.items()}
    lines.append("")
    if p.class_names is not None:
        rows = [["class", *SPLITS, "total", "val %", "test %"]]
        per = {k: np.bincount(p.labels[k], minlength=len(p.class_names)) for k in SPLITS}
        for c, name in enumerate(p.class_names + ["(all)"]):
            n = [int(per[k][c]) if c < len(p.class_names) else counts[k] for k in SPLITS]
            tot = sum(n)
            pct = [f"{100 * x / tot:.1f}" if tot else "-" for x in n[1:]]
            rows.append([name, *map(str, n), str(tot), *pct])
        lines += _table(rows)
    else:
        lines.append("unlabelled: " + ", ".join(f"{k} {counts[k]}" for k in SPLITS))

    cols = [p.items[k] for k in SPLITS]
    w = [x for c in cols for x in c["width"]]
    h = [x for c in cols for x in c["height"]]
    lines += ["", f"stored widths: {_stats(w)}; heights: {_stats(h)}"]
    if w:
        aspect = [max(a, b) / min(a, b) for a, b in zip(w, h)]
        up = sum(min(a, b) < s["size"] for a, b in zip(w, h))
        lines.append(f"aspect (long/short): median {statistics.median(aspect):.2f}, max {max(aspect):.2f}; "
                     f"{up} image(s) upscaled to {s['size']}")
    modes = Counter(m for c in cols for m in c["mode"])
    lines.append("stored modes: " + ", ".join(f"{m} {n}" for m, n in modes.most_common()))
    mean, std = _channel_stats([a for a in p.arrays.values() if len(a)])
    if len(mean):
        names = ["gray"] if len(mean) == 1 else ["red", "green", "blue"]
        lines.append("pixels (0..255): "
                     + "; ".join(f"{n} mean {m:.1f} std {d:.1f}" for n, m, d in zip(names, mean, std)))

    if not r:
        return lines
    if "captions" in r:
        lines += ["", *caption_stats_lines(r["captions"])]
    if p.clips is not None:  # videos: no near-duplicate or outlier checks
        lines += ["", f"videos kept {r['videos_kept']}; quarantined: {len(r['quarantined'])} file(s)"]
        lines += [f"    {e['source']}: {e['reason']}" for e in r["quarantined"][:max_examples]]
        lines.append(f"exact duplicates removed: {len(r['duplicates'])}; too short: {len(r['too_short'])}")
        lines += [f"    {e['source']}: {e['frames']} frames, clips need {e['needed']}"
                  for e in r["too_short"][:max_examples]]
        return lines
    q = r["quarantined"]
    lines += ["", f"quarantined: {len(q)} file(s)"]
    for kind, n in Counter(_reason_kind(e["reason"]) for e in q).most_common():
        lines.append(f"  {n} x {kind}")
    for e in q[:max_examples]:
        lines.append(f"    e.g. {e['source']}: {e['reason']}")
    d = r["duplicates"]
    conflicts = [e for e in d if "label_conflict" in e]
    lines.append(f"exact duplicates removed: {len(d)} ({len(conflicts)} with a different label)")
    for e in (conflicts + [e for e in d if "label_conflict" not in e])[:max_examples]:
        extra = f" (labels {e['label_conflict'][0]!r} vs {e['label_conflict'][1]!r})" if "label_conflict" in e else ""
        lines.append(f"    {e['source']} = {e['duplicate_of']}{extra}")
    nd = r["near_duplicates"]
    lines.append(f"near duplicates (pHash <= {nd['max_distance']} bits, thumbnail difference <= {nd['max_mae']:g}): "
                 f"{nd['pairs_found']} pair(s) over "
                 f"{nd['images_involved']} image(s), {nd['pairs_across_splits']} across splits")
    if "removed" in nd:
        lines.append(f"  removed {len(nd['removed'])}: the later file of each pair")
    for e in nd["pairs"][:max_examples]:
        lines.append(f"    {e['a']} ~ {e['b']}: {e['distance']} bits, difference {e['mae']:g} "
                     f"({e['splits'][0]} / {e['splits'][1]})")
    o = r["outliers"]
    kinds = Counter(reason.split(":")[0] for e in o for reason in e["reasons"])
    verb = "removed" if r.get("outliers_removed") else "flagged, kept"
    lines.append(f"outliers {verb}: {len(o)} image(s)"
                 + (": " + ", ".join(f"{k} {n}" for k, n in kinds.items()) if o else ""))
    for e in o[:max_examples]:
        lines.append(f"    {e['source']} ({e['split']}): {'; '.join(e['reasons'])}")
    return lines


def prepare_summary(p: Prepared) -> str:
    """What `prepare` did, in one line: kept per split, quarantined, removed and flagged."""
    r = p.report
    if p.clips is not None:
        from difforge.data.video_prepare import clip_summary

        return clip_summary(p)
    counts = ", ".join(f"{k} {len(v)}" for k, v in p.arrays.items())
    near = r["near_duplicates"]
    return (f"kept {r['kept']} of {r['candidates']} files ({counts}); quarantined {len(r['quarantined'])}, "
            f"duplicates removed {len(r['duplicates'])}, near-duplicate pairs {near['pairs_found']} "
            f"({near['pairs_across_splits']} across splits), outliers {len(r['outliers'])}"
            + (f"; captioned {r['captions']['captioned']}" if "captions" in r else ""))


def _locator(p: Prepared) -> dict[str, tuple[str, int]]:
    return {key: (split, i) for split in SPLITS for i, key in enumerate(p.items[split]["source"])}


def _save(images: list[np.ndarray], path: Path, nrow: int, size: int) -> Path:
    import torch

    from difforge.io.images import save_grid

    batch = torch.from_numpy(np.stack([np.asarray(a) for a in images]))
    return save_grid(batch, path, nrow=nrow, scale=max(1, SHEET_CELL // size))


def contact_sheets(p: Prepared, out_dir: str | Path) -> list[Path]:
    """One PNG per class (or `all.png` unlabelled), `outliers.png`, `near_duplicates.png`."""
    out = Path(out_dir)
    size = p.settings["size"]
    pool = [(sha, split, i) for split in SPLITS for i, sha in enumerate(p.items[split]["sha256"])]
    pool.sort()  # content-hash order: a stable pseudo-random sample
    written = []
    groups: dict[str, list] = {}
    frames = p.clips["frames"] if p.clips is not None else None  # clips: a row of frames each
    most = SHEET_IMAGES if frames is None else max(1, SHEET_IMAGES // frames)
    for sha, split, i in pool:
        name = p.class_names[int(p.labels[split][i])] if p.class_names is not None else "all"
        if len(groups.setdefault(name, [])) < most:
            groups[name].append(p.arrays[split][i])
    for c, name in enumerate(p.class_names or ["all"]):
        if groups.get(name):
            safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)
            cells = groups[name] if frames is None else [x for clip in groups[name] for x in clip.swapaxes(0, 1)]
            written.append(_save(cells, out / f"{c:02d}-{safe}.png", frames or 8, size))
    where = _locator(p)
    flagged = [where[e["source"]] for e in p.report.get("outliers", []) if e["source"] in where]
    if flagged:
        written.append(_save([p.arrays[s][i] for s, i in flagged[:SHEET_IMAGES]], out / "outliers.png", 8, size))
    pairs = [(where[e["a"]], where[e["b"]]) for e in p.report.get("near_duplicates", {}).get("pairs", [])
             if e["a"] in where and e["b"] in where][: SHEET_IMAGES // 2]
    if pairs:
        images = [p.arrays[s][i] for pair in pairs for s, i in pair]
        written.append(_save(images, out / "near_duplicates.png", 8, size))
    return written


def inspect(target: str | Path, sheets_dir: str | Path | None = None, cfg=None, *, verify: bool = False,
            progress: bool = True, log=print) -> tuple[list[str], list[Path]]:
    """Report on a store, or on a source prepared in memory with `cfg` (nothing written but
    the sheets). Sheets go to `sheets_dir`, default STORE/contact_sheets or
    ./NAME-contact-sheets for a source. Returns (report lines, sheet paths)."""
    from difforge.data.prepare import PrepareConfig, prepare
    from difforge.data.shards import is_shard_spec, shard_set_name
    from difforge.data.store import is_store
    from difforge.io.outputs import check_output_dir

    target = Path(target)
    store = is_store(target)
    name = shard_set_name(target) if is_shard_spec(target) else target.resolve().stem
    default = target / "contact_sheets" if store else Path(f"{name}-contact-sheets")
    sheets = check_output_dir(sheets_dir if sheets_dir is not None else default, holds="contact sheets",
                              is_ours=is_sheets_dir, allow_ours=True, what="--sheets")
    if store:
        p = read_prepared(target, verify=verify)
        if verify:
            log(f"verified: every array of {target} matches its SHA-256 in the manifest")
    else:
        p = prepare(target, cfg or PrepareConfig(), progress=progress, log=log)
    return summary(p), contact_sheets(p, sheets)


SHEET_NAME = re.compile(r"(\d\d-.+|all|outliers|near_duplicates)\.png")


def is_sheets_dir(path: Path) -> bool:
    """A folder holding only contact sheets (which `inspect` replaces when run again)."""
    return all(f.is_file() and SHEET_NAME.fullmatch(f.name) for f in path.iterdir())


def read_prepared(path: str | Path, *, verify: bool = False):
    """A store read back as a `prepare.Prepared` (arrays memory-mapped), for `inspect`."""
    manifest = read_manifest(path)
    arrays, labels = {}, {}
    for split in manifest["splits"]:
        arrays[split], labels[split] = load_split_arrays(path, manifest, split, verify=verify)
    return Prepared(
        arrays=arrays,
        labels=labels if manifest["class_names"] is not None else None,
        items={s: e["items"] for s, e in manifest["splits"].items()},
        class_names=manifest["class_names"],
        settings=manifest["settings"],
        source=manifest["source"],
        report=read_report(path),
        clips=manifest.get("clips"),
    )
