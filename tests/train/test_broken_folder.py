"""Training on a folder of deliberately awkward and broken images never crashes: odd
modes are converted and trained on, unusable files are skipped and listed."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from difforge.cli import main


def _png_header_only(width, height):
    """A PNG that claims width x height pixels (a decompression bomb's header)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def _folder(root):
    rng = np.random.default_rng(0)
    good = []
    for k, cls in enumerate(("a", "b")):
        d = root / cls
        d.mkdir(parents=True)
        rgb = [Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)) for _ in range(6)]
        for i, im in enumerate(rgb):
            im.save(d / f"rgb{i}.png")
        rgb[0].convert("CMYK").save(d / "cmyk.jpg")
        Image.fromarray(rng.integers(0, 65535, (12, 12), dtype=np.uint16)).save(d / "deep16.png")
        rgb[1].convert("P").save(d / "palette.png")
        rgb[2].convert("RGBA").save(d / "alpha.png")
        rgb[3].resize((3, 3)).save(d / "tiny.png")
        good += [f"{cls}/{n}" for n in ("cmyk.jpg", "deep16.png", "palette.png", "alpha.png", "tiny.png")]
        buf = io.BytesIO()
        rgb[4].save(buf, "PNG")
        (d / "truncated.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    bad = {
        "a/bomb.png": _png_header_only(30000, 30000),
        "a/not_an_image.png": b"hello, I am text",
        "b/empty.jpg": b"",
        "b/notes.txt": b"not an image at all",
    }
    for name, data in bad.items():
        (root / name).write_bytes(data)
    return good, {*bad, "a/truncated.png", "b/truncated.png"}


def test_broken_folder_trains_and_reports(tmp_path):
    good, bad = _folder(tmp_path / "imgs")
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        main(["train", "--data", str(tmp_path / "imgs"), "--image-size", "8", "--model", "tiny", "--max-steps", "2",
              "--batch-size", "4", "--sample-every", "0", "--out", str(out), "--no-progress"])
    assert e.value.code == 0
    report = (out / "skipped_files.txt").read_text().splitlines()
    listed = {line.split("\t")[0] for line in report}
    root = str(tmp_path / "imgs") + "/"
    assert {p.removeprefix(root) for p in listed} == bad  # every bad file, and only those
    assert all(line.split("\t")[1].strip() for line in report)  # each with a reason
    assert not any(g in " ".join(listed) for g in good)
    assert (out / "checkpoints" / "step-2" / "meta.json").exists()
