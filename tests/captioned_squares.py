"""A captioned folder shared by the text tests: 16 RGB 8x8 images, each a red or blue square
on black, with a metadata.jsonl caption naming its colour ("a red square")."""

import json
from pathlib import Path

import numpy as np
from PIL import Image

COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220)}


def write_captioned_squares(root: Path) -> Path:
    """The 16 images and their metadata.jsonl in `root` (colours alternate); returns `root`."""
    lines = []
    for i in range(16):
        name = list(COLOURS)[i % 2]
        a = np.zeros((8, 8, 3), np.uint8)
        a[2:6, 2:6] = COLOURS[name]
        Image.fromarray(a).save(root / f"{i:02d}.png")
        lines.append(json.dumps({"file_name": f"{i:02d}.png", "text": f"a {name} square"}))
    (root / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return root
