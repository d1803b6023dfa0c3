"""A generated messy image folder with planted problems, and what each plant is."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 32


def smooth_picture(rng: np.random.Generator, shape: str, size: int = SIZE) -> np.ndarray:
    """A random smooth background (4x4 colours, bilinear) with a circle or square on it."""
    grid = rng.integers(70, 190, (4, 4, 3), dtype=np.uint8)
    bg = np.asarray(Image.fromarray(grid).resize((size, size), Image.Resampling.BILINEAR)).copy()
    r = int(rng.integers(5, 9))
    cy, cx = rng.integers(r + 1, size - r - 1, 2)
    yy, xx = np.mgrid[:size, :size]
    mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r if shape == "circle" else (abs(yy - cy) <= r) & (abs(xx - cx) <= r)
    bg[mask] = rng.integers(0, 256, 3)
    return bg


def make_messy(root: Path, n_per_class: int = 24, seed: int = 0) -> dict:
    """Write the folder; returns {"valid": {relpath: class}, "dups": {copy: original},
    "near": [(a, b)], "bad": {relpath: words the reason must contain}, "outliers": {relpath: kind}}."""
    rng = np.random.default_rng(seed)
    plan: dict = {"valid": {}, "dups": {}, "near": [], "bad": {}, "outliers": {}}
    pictures = {}
    for cls, shape in (("circles", "circle"), ("squares", "square")):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            rel = f"{cls}/{cls[0]}{i:02d}.png"
            pictures[rel] = smooth_picture(rng, shape)
            Image.fromarray(pictures[rel]).save(root / rel)
            plan["valid"][rel] = cls

    def add(rel: str, image: Image.Image, cls: str, **save) -> None:
        image.save(root / rel, **save)
        plan["valid"][rel] = cls

    # exact duplicates: a byte copy, and the same pixels as BMP (same decoded content)
    shutil.copy(root / "circles/c00.png", root / "circles/copy_of_c00.png")
    plan["dups"]["circles/copy_of_c00.png"] = "circles/c00.png"
    Image.fromarray(pictures["squares/s03.png"]).save(root / "squares/s03_again.bmp")
    plan["dups"]["squares/s03_again.bmp"] = "squares/s03.png"
    # near duplicates: brighter, and re-encoded as JPEG
    brighter = np.clip(pictures["circles/c05.png"].astype(int) + 6, 0, 255).astype(np.uint8)
    add("circles/c05_brighter.png", Image.fromarray(brighter), "circles")
    add("circles/c05_recompressed.jpg", Image.fromarray(pictures["circles/c05.png"]), "circles", quality=85)
    plan["near"] += [("circles/c05.png", "circles/c05_brighter.png"),
                     ("circles/c05.png", "circles/c05_recompressed.jpg")]
    # odd modes, all valid (each a new picture)
    base = {m: Image.fromarray(smooth_picture(rng, "square")) for m in ("cmyk", "p", "rgba", "la", "1", "i16")}
    add("squares/cmyk.jpg", base["cmyk"].convert("CMYK"), "squares")
    add("squares/palette.gif", base["p"].convert("P", palette=Image.Palette.ADAPTIVE, colors=16), "squares")
    rgba = base["rgba"].convert("RGBA")
    rgba.putalpha(Image.fromarray(np.tile(np.linspace(0, 255, SIZE, dtype=np.uint8), (SIZE, 1))))
    add("squares/alpha.png", rgba, "squares")
    add("squares/gray_alpha.png", base["la"].convert("LA"), "squares")
    add("squares/bilevel.png", base["1"].convert("1"), "squares")
    add("squares/sixteen_bit.png", Image.fromarray(np.asarray(base["i16"].convert("L")).astype(np.uint16) * 257),
        "squares")
    # unusable files
    raw = (root / "circles/c01.png").read_bytes()
    (root / "circles/truncated.png").write_bytes(raw[: len(raw) // 2])
    (root / "squares/garbage.jpg").write_bytes(rng.integers(0, 256, 500, dtype=np.uint8).tobytes())
    (root / "squares/empty.png").write_bytes(b"")
    (root / "circles/notes.txt").write_text("not an image")
    Image.new("L", (400, 400), 0).save(root / "squares/huge.png")  # over the test's 100 000-pixel limit
    plan["bad"] = {
        "circles/truncated.png": "truncated",
        "squares/garbage.jpg": "cannot identify",
        "squares/empty.png": "cannot identify",
        "circles/notes.txt": "unsupported file type",
        "squares/huge.png": "decompression-bomb",
    }
    # outliers (valid, flagged)
    add("circles/tiny.png", Image.fromarray(rng.integers(0, 256, (3, 3, 3), dtype=np.uint8)), "circles")
    wide = Image.fromarray(smooth_picture(rng, "circle", 40)).resize((160, 20))
    add("circles/wide.png", wide, "circles")
    add("circles/blank.png", Image.new("RGB", (SIZE, SIZE), (128, 128, 128)), "circles")
    checker = (np.indices((SIZE, SIZE)) // 8).sum(0) % 2 * 255
    add("squares/checker.png", Image.fromarray(checker.astype(np.uint8)), "squares")
    plan["outliers"] = {"circles/tiny.png": "tiny", "circles/wide.png": "aspect",
                        "circles/blank.png": "nearly constant",
                        "squares/checker.png": "far from the rest: class 'squares'"}
    for copy in plan["dups"]:
        plan["valid"].pop(copy, None)
    return plan
