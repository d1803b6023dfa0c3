"""Captions of an image folder, in the two layouts people already use.

- `metadata.jsonl` at the folder's root (Hugging Face `imagefolder`): one JSON object per
  line, `{"file_name": "cats/a.png", "text": "a cat on a sofa"}`, `file_name` relative to
  the root (forward slashes); the caption may also be under "caption";
- a text file beside each image with the same name: `cat.png` + `cat.txt` (UTF-8).

An image with a `metadata.jsonl` line takes that line's caption; any other image its
`.txt`. A folder is captioned when it has a `metadata.jsonl` or any image has a `.txt`
beside it; then every image needs a caption.

Nothing here stops on a bad caption and nothing is deleted. Each problem is one
(path, reason) pair, like an undecodable image's: the image is left out when its caption
is empty (after stripping white space), longer than `MAX_CAPTION_CHARS` characters, not
UTF-8, not a string, or missing; a metadata line that is not JSON, not an object, names
no file, names a file that is not an image of the folder, or repeats an earlier line's
image is reported and ignored; a `.txt` with no image beside it, or one that a metadata
line overrides, is reported as unused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

MAX_CAPTION_CHARS = 1000  # a longer caption is refused (text encoders read a few dozen tokens)
METADATA_FILE = "metadata.jsonl"
CAPTION_FIELDS = ("text", "caption")  # the metadata field holding the caption, first found
_MAX_TXT_BYTES = 4 * MAX_CAPTION_CHARS + 3  # a .txt longer than this (UTF-8, BOM) is too long unread


@dataclass
class FolderCaptions:
    """What `read_folder_captions` found: a caption per usable image, the caption files it
    read (not to be reported as unsupported files), and every problem as (path, reason)."""

    captions: dict[Path, str] = field(default_factory=dict)
    used: set[Path] = field(default_factory=set)
    problems: list[tuple[str, str]] = field(default_factory=list)


def _check(text: object, where: str) -> tuple[str | None, str | None]:
    """(the caption, None) or (None, the reason it is refused), naming `where` it came from."""
    if not isinstance(text, str):
        return None, f"caption {where} is not a string ({type(text).__name__})"
    text = text.strip()
    if not text:
        return None, f"caption {where} is empty"
    if len(text) > MAX_CAPTION_CHARS:
        return None, f"caption {where} has {len(text)} characters, over the {MAX_CAPTION_CHARS} limit"
    return text, None


def _read_txt(path: Path) -> tuple[str | None, str | None]:
    """A `.txt` caption file -> (caption, None) or (None, reason)."""
    try:
        with open(path, "rb") as f:
            raw = f.read(_MAX_TXT_BYTES + 1)
    except OSError as e:
        return None, f"caption {path.name} cannot be read ({type(e).__name__}: {e.strerror or e})"
    if len(raw) > _MAX_TXT_BYTES:
        return None, f"caption {path.name} is over {_MAX_TXT_BYTES} bytes (the limit is {MAX_CAPTION_CHARS} chars)"
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        return None, f"caption {path.name} is not UTF-8 (byte {e.start})"
    return _check(text, path.name)


def _metadata_lines(path: Path, by_name: dict[str, Path], found: FolderCaptions) -> dict[Path, tuple[str, int]]:
    """Parse `metadata.jsonl`: image -> (its caption or the reason it has none, line)."""
    out: dict[Path, tuple[str, int]] = {}
    refused: dict[Path, str] = {}
    try:
        raw = path.read_bytes()
    except OSError as e:
        found.problems.append((str(path), f"cannot be read ({type(e).__name__}: {e.strerror or e})"))
        return {}
    found.used.add(path)
    for number, line in enumerate(raw.split(b"\n"), 1):
        key = f"{path}:{number}"
        try:
            text = line.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as e:
            found.problems.append((key, f"not UTF-8 (byte {e.start})"))
            continue
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            found.problems.append((key, f"not valid JSON ({e.msg}, column {e.colno})"))
            continue
        if not isinstance(obj, dict):
            found.problems.append((key, f"expected a JSON object, got {type(obj).__name__}"))
            continue
        name = obj.get("file_name")
        if not isinstance(name, str) or not name.strip():
            found.problems.append((key, "no \"file_name\""))
            continue
        rel = PurePosixPath(name.strip().replace("\\", "/")).as_posix().removeprefix("./")
        image = by_name.get(rel)
        if image is None:
            found.problems.append((key, f"file_name {name[:200]!r} is not an image in the folder"))
            continue
        if image in out or image in refused:
            first = out[image][1] if image in out else refused[image]
            found.problems.append((key, f"a second line for {rel!r} (first: line {first}); ignored"))
            continue
        field_name = next((f for f in CAPTION_FIELDS if f in obj), None)
        if field_name is None:
            refused[image] = number
            found.problems.append((str(image), f"caption {path.name}:{number} has no "
                                               f"{' or '.join(map(repr, CAPTION_FIELDS))} field"))
            continue
        caption, reason = _check(obj[field_name], f"{path.name}:{number}")
        if caption is None:
            refused[image] = number
            found.problems.append((str(image), reason))
        else:
            out[image] = (caption, number)
    return {**out, **{image: ("", number) for image, number in refused.items()}}


def read_folder_captions(root: Path, images: list[Path], others: list[tuple[str, str]]) -> FolderCaptions | None:
    """The captions of `images` (the folder scan's image files under `root`; `others` its
    other files) or None when the folder is not captioned. Images without a usable
    caption are missing from `captions` and listed in `problems`."""
    root = Path(root)
    metadata = root / METADATA_FILE
    texts = {}  # (folder, stem) -> .txt path
    for p, _ in others:
        p = Path(p)
        if p.suffix.lower() == ".txt":
            texts[(p.parent, p.stem)] = p
    beside = {image: texts[(image.parent, image.stem)] for image in images if (image.parent, image.stem) in texts}
    if not metadata.is_file() and not beside:
        return None
    found = FolderCaptions()
    from_metadata: dict[Path, tuple[str, int]] = {}
    if metadata.is_file():
        by_name = {image.relative_to(root).as_posix(): image for image in images}
        from_metadata = _metadata_lines(metadata, by_name, found)
    for image in images:
        txt = beside.get(image)
        if image in from_metadata:
            caption, number = from_metadata[image]
            if caption:
                found.captions[image] = caption
            if txt is not None:
                found.used.add(txt)
                found.problems.append((str(txt), f"not used: {METADATA_FILE}:{number} captions {image.name}"))
        elif txt is not None:
            found.used.add(txt)
            caption, reason = _read_txt(txt)
            if caption is None:
                found.problems.append((str(image), reason))
            else:
                found.captions[image] = caption
        else:
            where = f"no {image.stem}.txt" + (f" and no {METADATA_FILE} line" if metadata.is_file() else "")
            found.problems.append((str(image), f"no caption ({where})"))
    for txt in sorted(set(texts.values()) - found.used):
        found.used.add(txt)
        found.problems.append((str(txt), "caption file without a used image of the same name beside it"))
    return found


# ---------------------------------------------------------------- caption statistics
_PROBLEM_KINDS = (  # (kind, pattern of the reasons above and of the shard reader's)
    ("empty", r"caption .* is empty"),
    ("too long", r"caption .* (characters, over|is over \d+ bytes)"),
    ("not UTF-8", r"caption .* is not UTF-8"),
    ("missing", r"no caption \(|caption .* has no .* field"),
    ("without image", r"caption (file )?without"),
    ("other", r"caption |not used: "),
)
TOP_WORDS = 20  # the most common words `caption_stats` lists


def caption_problem_kind(reason: str) -> str | None:
    """The kind of a caption problem's reason (see `_PROBLEM_KINDS`), None for a reason that
    is not about a caption (an undecodable image)."""
    import re

    return next((kind for kind, pattern in _PROBLEM_KINDS if re.match(pattern, reason)), None)


def _spread(values: list[int]) -> dict[str, int] | None:
    import statistics

    return {"min": min(values), "median": statistics.median_low(values), "max": max(values)} if values else None


def caption_stats(captions: list[str], problems: list[str] = ()) -> dict:
    """Statistics of the kept captions and of the caption problems' reasons: how many are
    captioned, caption length in characters and in words (white-space separated; min,
    median (the lower middle), max), the problems by kind, and the `TOP_WORDS` most common
    words (lower-cased, punctuation stripped at the ends; ties in alphabetical order)."""
    import re
    from collections import Counter

    words = [c.split() for c in captions]
    counts = Counter(w for ws in words for w in (re.sub(r"^\W+|\W+$", "", x.lower()) for x in ws) if w)
    kinds = Counter(k for k in map(caption_problem_kind, problems) if k is not None)
    return {
        "captioned": len(captions),
        "distinct": len(set(captions)),
        "chars": _spread([len(c) for c in captions]),
        "words": _spread([len(ws) for ws in words]),
        "problems": {k: kinds[k] for k, _ in _PROBLEM_KINDS if kinds[k]},
        "top_words": [[w, n] for w, n in sorted(counts.items(), key=lambda wn: (-wn[1], wn[0]))[:TOP_WORDS]],
    }


def caption_stats_lines(stats: dict) -> list[str]:
    """`caption_stats` as report lines."""
    def spread(s):
        return f"min {s['min']}, median {s['median']}, max {s['max']}" if s else "none"

    problems = ", ".join(f"{k} {n}" for k, n in stats["problems"].items()) or "none"
    lines = [f"captions: {stats['captioned']} captioned ({stats['distinct']} distinct); problems: {problems}",
             f"  length in characters: {spread(stats['chars'])}; in words: {spread(stats['words'])}"]
    if stats["top_words"]:
        lines.append("  most common words: " + ", ".join(f"{w} {n}" for w, n in stats["top_words"][:10]))
    return lines
