"""`difforge prepare`, `difforge inspect` and `difforge train --data STORE`, as a user runs them."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli_runner import run
from difforge.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from messy_folder import make_messy  # noqa: E402


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    make_messy(root / "shapes")
    out = root / "store"
    with pytest.raises(SystemExit) as e:
        main(["prepare", str(root / "shapes"), str(out), "--size", "16", "--max-pixels", "100000", "--no-progress"])
    assert e.value.code == 0
    return out


def test_prepare_then_inspect(store, capsys, tmp_path):
    manifest = json.loads((store / "manifest.json").read_text())
    assert manifest["size"] == 16 and manifest["class_names"] == ["circles", "squares"]
    assert run(["inspect", str(store), "--verify", "--sheets", str(tmp_path / "sheets")]) == 0
    out = capsys.readouterr().out
    assert "quarantined: 5 file(s)" in out and "exact duplicates removed: 2" in out
    # the planted pair is listed with its distance (the line "near duplicates ..." alone would always match)
    assert "circles/c05.png ~ circles/c05_brighter.png:" in out
    assert "outliers flagged, kept: 4 image(s)" in out
    total = sum(manifest["splits"][s]["count"] for s in ("train", "val", "test"))
    assert "(all)  " in out and str(total) in out
    sheets = sorted(p.name for p in (tmp_path / "sheets").glob("*.png"))
    assert sheets == ["00-circles.png", "01-squares.png", "near_duplicates.png", "outliers.png"]
    with Image.open(tmp_path / "sheets" / "00-circles.png") as im:
        assert im.mode == "RGB" and im.width == (8 * (16 + 2) + 2) * 3  # 8 per row, padded 2, enlarged 3x


def test_inspect_a_source_writes_no_store(tmp_path, capsys):
    src = tmp_path / "flat"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (12, 12), dtype=np.uint8)).save(src / f"{i}.png")
    assert run(["inspect", str(src), "--sheets", str(tmp_path / "s"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "unlabelled: train" in out and "1 channel(s)" in out
    assert (tmp_path / "s" / "00-all.png").is_file() and not (src / "manifest.json").exists()


def test_train_reads_the_store(store, tmp_path):
    out = tmp_path / "run"
    assert run(["train", "--data", str(store), "--model", "tiny", "--max-steps", "2", "--batch-size", "4",
                "--out", str(out), "--no-progress", "--sample-every", "0", "--checkpoint-every", "0"]) == 0
    info = json.loads((out / "model.json").read_text())
    assert info["class_names"] == ["circles", "squares"] and info["channels"] == 3 and info["native_size"] == 16
    import yaml

    assert yaml.safe_load((out / "config.yaml").read_text())["data"]["dataset"] == "prepared"
    assert not (out / "skipped_files.txt").exists()  # preparation already reported them


@pytest.mark.parametrize(
    "argv, message",
    [
        (["prepare", "/no/such/dir", "{tmp}/o"], "no such file or directory"),
        (["prepare", "{tmp}", "{tmp}", "--size", "2"], "size must be in 4..1024"),
        (["prepare", "{tmp}/src", "{tmp}/full"], "is not empty and holds no prepared store"),
        (["prepare", "{tmp}/src", "{tmp}/o", "--val", "0.7", "--test", "0.5"], "val + test fractions"),
        (["inspect", "/no/such/store"], "no such file or directory"),
        (["prepare", "{tmp}/src/a.png", "{tmp}/o"], "unsupported source"),
        (["prepare", "{store}", "{tmp}/o"], "already a prepared store"),
    ],
)
def test_clear_one_line_errors(store, tmp_path, capsys, argv, message):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.png").write_bytes(b"x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    assert run([a.replace("{tmp}", str(tmp_path)).replace("{store}", str(store)) for a in argv]) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert (tmp_path / "full" / "keep.txt").exists()
