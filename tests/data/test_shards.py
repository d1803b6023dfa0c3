"""WebDataset-layout tar shards: read by difforge's reader against tars that Python's own
tarfile writes here (an independent writer), every bad-member case, `prepare --format
shards` round trips and determinism, and training a text model on shards."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from cli_runner import run
from difforge.config import DataConfig
from difforge.data import load_dataset
from difforge.data.captions import MAX_CAPTION_CHARS, caption_stats
from difforge.data.shards import expand_braces, load_shards
from difforge.data.store import load_store, read_manifest, read_report


def _png(a: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format=fmt)
    return buf.getvalue()


def _gray(level: int) -> bytes:
    return _png(np.full((8, 8), level, np.uint8))


def _tar(path, members: list[tuple[str, bytes]]) -> None:
    """A shard written with the standard library alone (GNU format, real-looking metadata)."""
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.uname = len(data), 1_700_000_000, "someone"
            tf.addfile(info, io.BytesIO(data))


def _level_captions(ds) -> dict[int, str]:
    return {int(ds.images[i, 0, 0, 0]): ds.captions[i] for i in range(len(ds))}


def test_a_hand_built_shard_is_read_with_captions_labels_and_class_names(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    jpeg = _png(rgb, "JPEG")
    _tar(tmp_path / "000000.tar", [("a/x.png", _gray(10)), ("a/x.txt", "café au lait\n".encode()), ("a/x.cls", b"1"),
                                   ("b.jpg", jpeg), ("b.cls", b"0\n"), ("b.txt", b"\xef\xbb\xbfbee")])
    _tar(tmp_path / "000001.tar", [("c-1.png", _gray(30)), ("c-1.txt", b"sea"), ("c-1.cls", b"1")])
    (tmp_path / "classes.txt").write_text("bird\nfish\n")
    ds, problems = load_shards(tmp_path, channels=3)
    assert problems == []
    assert ds.captions == ["café au lait", "bee", "sea"] and ds.labels.tolist() == [1, 0, 1]
    assert ds.class_names == ["bird", "fish"] and ds.images.shape == (3, 3, 8, 8)
    assert (ds.images[0] == 10).all() and (ds.images[2] == 30).all()
    # the JPEG through Pillow directly, as an independent decode: the same pixels
    assert np.array_equal(ds.images[1].numpy().transpose(1, 2, 0), np.asarray(Image.open(io.BytesIO(jpeg))))
    # one shard, a brace pattern and a list pattern name the same samples
    one, _ = load_shards(tmp_path / "000001.tar")
    assert one.captions == ["sea"] and one.class_names == ["bird", "fish"]
    both, _ = load_shards(f"{tmp_path}/{{000000..000001}}.tar", channels=3)
    assert both.captions == ds.captions and bool((both.images == ds.images).all())
    assert expand_braces("s/{08..10}-{a,b}.tar") == ["s/08-a.tar", "s/08-b.tar", "s/09-a.tar", "s/09-b.tar",
                                                     "s/10-a.tar", "s/10-b.tar"]
    with pytest.raises(FileNotFoundError, match="1 of the 3 shards"):
        load_shards(f"{tmp_path}/{{000000..000002}}.tar")


def test_unlabelled_uncaptioned_shards_and_class_numbers_without_classes_txt(tmp_path):
    _tar(tmp_path / "s.tar", [("a.png", _gray(1)), ("b.png", _gray(2))])
    ds, problems = load_shards(tmp_path / "s.tar")
    assert problems == [] and ds.captions is None and ds.labels is None and ds.name == "s"
    _tar(tmp_path / "t.tar", [("a.png", _gray(1)), ("a.cls", b"2"), ("b.png", _gray(2)), ("b.cls", b"0")])
    ds, _ = load_shards(tmp_path / "t.tar")
    assert ds.class_names == ["0", "1", "2"] and ds.labels.tolist() == [2, 0]


def test_every_bad_member_is_one_line_and_the_good_samples_are_kept(tmp_path):
    good = [(f"g{i}.png", _gray(100 + i)) for i in range(3)]
    members = [
        good[0], ("g0.txt", b"good zero"),
        ("bad.png", b"not a png at all"), ("bad.txt", b"undecodable"),
        ("latin.png", _gray(1)), ("latin.txt", "caf\xe9".encode("latin-1")),
        ("empty.png", _gray(2)), ("empty.txt", b"  \n"),
        good[1], ("g1.txt", b"good one"),
        ("long.png", _gray(3)), ("long.txt", b"x" * (MAX_CAPTION_CHARS + 1)),
        ("orphan.txt", b"a caption without an image"),
        ("nocap.png", _gray(4)),
        ("two.png", _gray(5)), ("two.jpg", _gray(6)), ("two.txt", b"two images"),
        ("extra.png", _gray(7)), ("extra.txt", b"extra member"), ("extra.json", b"{}"),
        good[2], ("g2.txt", b"good two"),
    ]
    _tar(tmp_path / "000000.tar", members)
    raw = (tmp_path / "000000.tar").read_bytes()
    _tar(tmp_path / "full.tar", [("t0.png", _gray(50)), ("t0.txt", b"before the cut"),
                                 ("t1.png", _gray(60)), ("t1.txt", b"cut off")])
    cut = (tmp_path / "full.tar").read_bytes()
    (tmp_path / "full.tar").unlink()
    t1 = cut.index(b"t1.png")  # the header of the second sample's image: cut inside its data
    (tmp_path / "000001.tar").write_bytes(cut[: t1 + 512 + 20])
    (tmp_path / "000002.tar").write_bytes(raw[: 2048 + 100])  # a copy cut inside its third header (bad.png's)
    ds, problems = load_shards(tmp_path)
    reasons = {where.removeprefix(str(tmp_path) + "/"): reason for where, reason in problems}
    assert len(reasons) == len(problems), "one report per member"
    assert all("\n" not in r for r in reasons.values())
    assert reasons.pop("000000.tar:bad.png").startswith("ImageError: not a readable image")
    assert reasons.pop("000000.tar:latin.png") == "caption latin.txt is not UTF-8 (byte 3)"
    assert reasons.pop("000000.tar:empty.png") == "caption empty.txt is empty"
    assert reasons.pop("000000.tar:long.png") == (f"caption long.txt has {MAX_CAPTION_CHARS + 1} characters, "
                                                  f"over the {MAX_CAPTION_CHARS} limit")
    assert reasons.pop("000000.tar:orphan.txt").startswith("caption without an image")
    assert reasons.pop("000000.tar:nocap.png") == "no caption (no nocap.txt)"
    assert reasons.pop("000000.tar:two.jpg").startswith("a second image for key 'two'")
    assert reasons.pop("000000.tar:extra.json") == "unsupported member type '.json'; ignored"
    assert reasons.pop("000001.tar:t1.png").startswith("truncated: the shard ends")
    assert reasons.pop("000002.tar").startswith("truncated")
    assert reasons == {}
    # every good sample, the ones beside the bad members and the one before the cut, with its caption;
    # "two" keeps its first image, "extra" its image and caption
    assert _level_captions(ds) == {100: "good zero", 101: "good one", 102: "good two", 5: "two images",
                                   7: "extra member", 50: "before the cut"}
    assert len(ds) == 7  # the six above, g0 twice: in 000000.tar and in the cut copy, before the cut


def test_caption_stats_closed_form():
    s = caption_stats(["a red square", "A red, square!", "blue"], ["caption x.txt is empty", "no caption (no y.txt)",
                                                                    "ImageError: broken"])
    assert s["captioned"] == 3 and s["distinct"] == 3
    assert s["chars"] == {"min": 4, "median": 12, "max": 14} and s["words"] == {"min": 1, "median": 3, "max": 3}
    assert s["problems"] == {"empty": 1, "missing": 1}
    assert s["top_words"][:3] == [["a", 2], ["red", 2], ["square", 2]]


@pytest.fixture(scope="module")
def captioned_classes(tmp_path_factory):
    """12 random RGB 8x8 PNGs in two class folders, a .txt caption beside each; one exact
    duplicate (removed by prepare) and one image without a caption (reported)."""
    root = tmp_path_factory.mktemp("src")
    rng = np.random.default_rng(0)
    truth = {}
    for i in range(12):
        cls = ["cats", "dogs"][i % 2]
        (root / cls).mkdir(exist_ok=True)
        a = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(a).save(root / cls / f"{i:02d}.png")
        (root / cls / f"{i:02d}.txt").write_text(f"a {cls[:-1]} numbered {i}, ünïcode")
        truth[f"{cls}/{i:02d}.png"] = (a, f"a {cls[:-1]} numbered {i}, ünïcode", cls)
    (root / "cats" / "copy.png").write_bytes((root / "cats" / "00.png").read_bytes())
    (root / "cats" / "copy.txt").write_text("the same picture")
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / "dogs" / "nocaption.png")
    return root, truth


def _prepare(src, out, *extra):
    return run(["prepare", str(src), str(out), "--size", "8", "--val", "0.25", "--test", "0.2", "--no-progress",
                *extra])


def test_prepare_to_shards_round_trips_the_images_captions_and_labels(captioned_classes, tmp_path, capsys):
    src, truth = captioned_classes
    assert _prepare(src, tmp_path / "sh", "--format", "shards", "--shard-size", "3") == 0, capsys.readouterr()
    assert "captioned 12" in capsys.readouterr().out
    manifest, splits = load_store(tmp_path / "sh", verify=True)
    assert manifest["layout"] == "shards" and manifest["class_names"] == ["cats", "dogs"]
    seen = set()
    for name, ds in splits.items():
        if ds is None:
            continue
        assert sorted(p.name for p in (tmp_path / "sh" / name).iterdir())[-1] == "classes.txt"
        for i, source in enumerate(manifest["splits"][name]["items"]["source"]):
            pixels, caption, cls = truth[source]
            assert np.array_equal(ds.images[i].numpy().transpose(1, 2, 0), pixels)
            assert ds.captions[i] == caption and ds.class_names[int(ds.labels[i])] == cls
            seen.add(source)
    assert seen == set(truth)  # the copy removed as a duplicate, the uncaptioned image quarantined
    report = read_report(tmp_path / "sh")
    assert [d["source"] for d in report["duplicates"]] == ["cats/copy.png"]
    assert report["duplicates"][0]["caption_conflict"][1] == "the same picture"
    assert report["quarantined"] == [{"source": "dogs/nocaption.png", "reason": "no caption (no nocaption.txt)"}]
    assert report["captions"]["captioned"] == 12 and report["captions"]["problems"] == {"missing": 1}
    assert report["captions"]["chars"] == {"min": 25, "median": 25, "max": 26}  # as docs/data.md shows
    # the arrays layout holds the same data, captions included
    assert _prepare(src, tmp_path / "arr") == 0
    _, arrays = load_store(tmp_path / "arr")
    for name, ds in splits.items():
        if ds is not None:
            assert bool((arrays[name].images == ds.images).all()) and arrays[name].captions == ds.captions
            assert arrays[name].labels.tolist() == ds.labels.tolist()
    # a split's folder of shards is a dataset by itself; preparing the shards again keeps every sample
    train, problems = load_shards(tmp_path / "sh" / "train")
    assert problems == [] and train.captions == splits["train"].captions
    assert train.class_names == ["cats", "dogs"] and bool((train.images == splits["train"].images).all())
    assert _prepare(tmp_path / "sh" / "train", tmp_path / "again", "--val", "0", "--test", "0") == 0
    _, again = load_store(tmp_path / "again")
    assert sorted(again["train"].captions) == sorted(train.captions)
    assert "captions: 12 captioned" in "\n".join(_inspect(tmp_path / "sh", capsys, tmp_path / "sheets"))


def _inspect(target, capsys, sheets) -> list[str]:
    assert run(["inspect", str(target), "--size", "8", "--no-progress", "--sheets", str(sheets)]) == 0
    return capsys.readouterr().out.splitlines()


def test_shards_are_deterministic_and_their_headers_fixed(captioned_classes, tmp_path):
    src, _ = captioned_classes
    for out in ("a", "b"):
        assert _prepare(src, tmp_path / out, "--format", "shards", "--shard-size", "4") == 0
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.tar"))
    assert len(files) >= 3
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    assert sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.tar")) == files
    with tarfile.open(tmp_path / "a" / "train" / "000000.tar") as tf:
        infos = tf.getmembers()
    assert [m.name for m in infos[:3]] == ["000000.png", "000000.txt", "000000.cls"]
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) for m in infos} == {(0, 0, 0, "", "", 0o644)}
    entry = read_manifest(tmp_path / "a")["splits"]["train"]
    assert sum(s["count"] for s in entry["shards"]) == entry["count"]


def test_inspect_and_prepare_read_bad_shards_and_report_them(tmp_path, capsys):
    _tar(tmp_path / "000000.tar", [("a.png", _gray(10)), ("a.txt", b"ok"), ("b.png", _gray(20)), ("b.txt", b""),
                                   ("c.txt", b"orphan")])
    lines = _inspect(tmp_path, capsys, tmp_path / "sheets")
    text = "\n".join(lines)
    assert "000000.tar:b.png: caption b.txt is empty" in text and "000000.tar:c.txt: caption without" in text
    assert "problems: empty 1, without image 1" in text


def test_train_a_text_model_on_shards(captioned_classes, tmp_path, capsys):
    src, _ = captioned_classes
    assert _prepare(src, tmp_path / "sh", "--format", "shards") == 0
    for data, out in ((tmp_path / "sh" / "train", "run"), (tmp_path / "sh", "store-run")):
        code = run(["train", "--data", str(data), "--model", "tiny", "--text-encoder", "scratch", "--max-steps", "2",
                    "--batch-size", "4", "--sample-every", "0", "--no-final-grid", "--device", "cpu",
                    "--out", str(tmp_path / out), "--no-progress"])
        assert code == 0, capsys.readouterr()
        card = json.loads((tmp_path / out / "model.json").read_text())
        assert card["conditioning"]["kind"] == "text"
    bundle = load_dataset(DataConfig(dataset="shards", path=str(tmp_path / "sh" / "train"), val_fraction=0.25))
    assert bundle.train.captions is not None and bundle.val is not None


def test_shard_options_are_one_line_errors(captioned_classes, tmp_path, capsys):
    src, _ = captioned_classes
    assert _prepare(src, tmp_path / "a", "--shard-size", "3") != 0
    assert "--shard-size 3: applies to --format shards only" in capsys.readouterr().err
    assert _prepare(src, tmp_path / "b", "--format", "shards", "--shard-size", "0") != 0
    assert "--shard-size 0: must be >= 1" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # checked before any work
