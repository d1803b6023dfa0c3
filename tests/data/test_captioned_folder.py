"""Captioned image folders: metadata.jsonl and .txt layouts, and every bad-caption case."""

import json
import os

import pytest
from PIL import Image

from difforge.config import DataConfig
from difforge.data import load_dataset, load_image_folder
from difforge.data.captions import MAX_CAPTION_CHARS


def _image(path, level: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (8, 8), level).save(path)


def _files(root) -> dict[str, bytes]:
    return {os.path.relpath(os.path.join(d, f), root): open(os.path.join(d, f), "rb").read()
            for d, _, names in os.walk(root) for f in names}


def _reasons(root, skipped) -> dict[str, str]:
    out = {os.path.relpath(p.split(".jsonl:")[0] + ".jsonl", root) + ":" + p.split(".jsonl:")[1]
           if ".jsonl:" in p else os.path.relpath(p, root): r for p, r in skipped}
    assert len(out) == len(skipped), "one report per file or line"
    assert all("\n" not in r and "\n" not in k for k, r in out.items()), "reports are one line"
    return out


def _by_level(ds) -> dict[int, str]:
    """Each image's gray level -> its caption (the fixtures give every image its own level)."""
    return {int(ds.images[i, 0, 0, 0]): ds.captions[i] for i in range(len(ds))}


def test_metadata_jsonl_flat_folder(tmp_path):
    for i, name in enumerate(["a.png", "b.png", "c.png"]):
        _image(tmp_path / name, 10 * (i + 1))
    lines = [{"file_name": "b.png", "text": "  the second  "}, {"file_name": "a.png", "text": "the first"},
             {"file_name": "./c.png", "caption": "the third", "extra": 1}]
    (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    ds, skipped = load_image_folder(tmp_path)
    assert skipped == [] and ds.labels is None and len(ds) == 3
    assert ds.captions == ["the first", "the second", "the third"]  # file order; stripped
    assert _by_level(ds) == {10: "the first", 20: "the second", 30: "the third"}
    assert "captioned" in repr(ds)


def test_metadata_jsonl_with_class_folders(tmp_path):
    _image(tmp_path / "cats" / "x.png", 10)
    _image(tmp_path / "dogs" / "y.png", 20)
    (tmp_path / "metadata.jsonl").write_text(
        '{"file_name": "dogs/y.png", "text": "a dog"}\n{"file_name": "cats/x.png", "text": "a cat"}\n')
    ds, skipped = load_image_folder(tmp_path)
    assert skipped == [] and ds.class_names == ["cats", "dogs"] and ds.labels.tolist() == [0, 1]
    assert ds.captions == ["a cat", "a dog"]


def test_txt_beside_each_image(tmp_path):
    _image(tmp_path / "cats" / "cat.png", 10)
    (tmp_path / "cats" / "cat.txt").write_text("a cat\n", encoding="utf-8")
    _image(tmp_path / "dogs" / "deep" / "dog.jpg", 20)  # class folders: images found recursively
    (tmp_path / "dogs" / "deep" / "dog.TXT").write_bytes("\ufeffun chien gris, trés calme".encode("utf-8"))  # BOM
    ds, skipped = load_image_folder(tmp_path)
    assert skipped == [] and ds.class_names == ["cats", "dogs"]
    assert _by_level(ds)[10] == "a cat" and _by_level(ds)[20] == "un chien gris, trés calme"


def test_every_bad_caption_is_one_reported_line_and_nothing_is_deleted(tmp_path):
    levels = iter(range(10, 250, 10))
    good = {"ok1.png": "fine", "ok2.png": "also fine"}
    for name in ["ok1.png", "ok2.png", "empty.png", "blank.png", "long.png", "huge.png", "latin1.png",
                 "nocaption.png", "m_ok.png", "m_number.png", "m_empty.png", "m_long.png", "m_nofield.png",
                 "both.png", "broken.png"]:
        _image(tmp_path / name, next(levels))
    (tmp_path / "ok1.txt").write_text(good["ok1.png"])
    (tmp_path / "ok2.txt").write_text(good["ok2.png"])
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "blank.txt").write_text(" \n\t ")
    (tmp_path / "long.txt").write_text("x" * (MAX_CAPTION_CHARS + 1))
    (tmp_path / "huge.txt").write_text("y" * 100_000)
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (tmp_path / "orphan.txt").write_text("an image that is not there")
    (tmp_path / "both.txt").write_text("loses to the metadata line")
    (tmp_path / "broken.txt").write_text("the image is not decodable")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    meta = [
        '{"file_name": "m_ok.png", "text": "from metadata"}',
        '{"file_name": "m_number.png", "text": 7}',
        '{"file_name": "m_empty.png", "text": ""}',
        json.dumps({"file_name": "m_long.png", "text": "z" * (MAX_CAPTION_CHARS + 5)}),
        '{"file_name": "m_nofield.png", "label": "x"}',
        '{"file_name": "both.png", "text": "wins over both.txt"}',
        '{"file_name": "gone.png", "text": "the image is missing"}',
        '{"file_name": "m_ok.png", "text": "a second line"}',
        '{"file_name": "m_ok.png", "text": broken json',
        '["a", "list"]',
        '{"text": "no file name"}',
    ]
    raw = "\n".join(meta).encode() + b"\n" + '{"file_name": "m_ok.png", "text": "caf\xe9"}'.encode("latin-1")
    (tmp_path / "metadata.jsonl").write_bytes(raw)
    before = _files(tmp_path)

    ds, skipped = load_image_folder(tmp_path)
    assert _files(tmp_path) == before  # nothing deleted, moved or rewritten
    assert sorted(ds.captions) == sorted(["fine", "also fine", "from metadata", "wins over both.txt"])
    reasons = _reasons(tmp_path, skipped)
    limit = str(MAX_CAPTION_CHARS)
    expected = {
        "empty.png": "caption empty.txt is empty",
        "blank.png": "caption blank.txt is empty",
        "long.png": f"caption long.txt has {MAX_CAPTION_CHARS + 1} characters, over the {limit} limit",
        "huge.png": f"(the limit is {limit} chars)",
        "latin1.png": "caption latin1.txt is not UTF-8 (byte 3)",
        "nocaption.png": "no caption (no nocaption.txt and no metadata.jsonl line)",
        "m_number.png": "caption metadata.jsonl:2 is not a string (int)",
        "m_empty.png": "caption metadata.jsonl:3 is empty",
        "m_long.png": f"caption metadata.jsonl:4 has {MAX_CAPTION_CHARS + 5} characters",
        "m_nofield.png": "caption metadata.jsonl:5 has no 'text' or 'caption' field",
        "both.txt": "not used: metadata.jsonl:6 captions both.png",
        "metadata.jsonl:7": "file_name 'gone.png' is not an image in the folder",
        "metadata.jsonl:8": "a second line for 'm_ok.png' (first: line 1); ignored",
        "metadata.jsonl:9": "not valid JSON",
        "metadata.jsonl:10": "expected a JSON object, got list",
        "metadata.jsonl:11": 'no "file_name"',
        "metadata.jsonl:12": "not UTF-8",
        "orphan.txt": "caption file without a used image",
        "broken.png": "not a readable image",
    }
    assert set(reasons) == set(expected)
    for key, words in expected.items():
        assert words in reasons[key], (key, reasons[key])


def test_captions_off_or_required(tmp_path):
    _image(tmp_path / "a.png", 10)
    (tmp_path / "a.txt").write_text("a caption")
    ds, skipped = load_image_folder(tmp_path, captions=False)
    assert ds.captions is None and skipped == [(str(tmp_path / "a.txt"), "unsupported file type '.txt'")]
    plain = tmp_path / "plain"
    _image(plain / "b.png", 20)
    (plain / "notes.txt").write_text("not beside an image of the same name: not a captioned folder")
    ds, skipped = load_image_folder(plain)
    assert ds.captions is None and "unsupported file type '.txt'" in skipped[0][1]
    with pytest.raises(ValueError, match="no captions in .*metadata.jsonl"):
        load_image_folder(plain, captions=True)
    none_usable = tmp_path / "none"
    _image(none_usable / "c.png", 30)
    (none_usable / "c.txt").write_text("")
    with pytest.raises(ValueError, match="no captioned images .*caption c.txt is empty"):
        load_image_folder(none_usable)


def test_load_dataset_keeps_folder_captions_through_the_split(tmp_path):
    for c in ("a", "b"):
        for i in range(6):
            level = 20 * i + (100 if c == "b" else 0)
            _image(tmp_path / c / f"{i}.png", level)
            (tmp_path / c / f"{i}.txt").write_text(f"gray level {level}")
    b = load_dataset(DataConfig(dataset="folder", path=str(tmp_path), val_fraction=0.25, channels=3))
    assert b.skipped == [] and len(b.train) == 8 and len(b.val) == 4 and b.channels == 3
    for part in (b.train, b.val):
        assert all(caption == f"gray level {level}" for level, caption in _by_level(part).items())
