"""`prepare` on a generated messy folder: every planted problem is found and reported,
nothing valid is lost, and splits stay put when files are added."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from difforge.data.folder import decode_image, fit_square
from difforge.data.inspect import read_prepared
from difforge.data.prepare import SPLITS, PrepareConfig, prepare, prepare_store, split_of
from messy_folder import make_messy, smooth_picture

CFG = PrepareConfig(max_pixels=100_000)  # makes the planted 400x400 "bomb" too large


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    root = tmp_path_factory.mktemp("messy") / "shapes"
    plan = make_messy(root)
    return root, plan, prepare(root, CFG, progress=False, log=lambda s: None)


def _stored(p):
    """source -> (split, index) for every stored image."""
    return {k: (s, i) for s in SPLITS for i, k in enumerate(p.items[s]["source"])}


def test_bad_files_quarantined_with_reasons(messy):
    _, plan, p = messy
    reasons = {e["source"]: e["reason"] for e in p.report["quarantined"]}
    assert set(reasons) == set(plan["bad"])
    for rel, words in plan["bad"].items():
        assert words in reasons[rel], (rel, reasons[rel])


def test_exact_duplicates_removed_and_named(messy):
    _, plan, p = messy
    found = {e["source"]: e["duplicate_of"] for e in p.report["duplicates"]}
    assert found == plan["dups"]
    stored = _stored(p)
    assert not set(plan["dups"]) & set(stored)
    assert all(orig in stored for orig in plan["dups"].values())
    assert all("label_conflict" not in e for e in p.report["duplicates"])


def test_near_duplicates_reported(messy):
    _, plan, p = messy
    pairs = {(e["a"], e["b"]): e for e in p.report["near_duplicates"]["pairs"]}
    for a, b in plan["near"]:
        e = pairs.get((a, b)) or pairs.get((b, a))
        assert e is not None and e["distance"] <= CFG.near_distance, (a, b)
        assert e["splits"] == [_stored(p)[e["a"]][0], _stored(p)[e["b"]][0]]
    crossing = sum(e["splits"][0] != e["splits"][1] for e in p.report["near_duplicates"]["pairs"])
    assert crossing == p.report["near_duplicates"]["pairs_across_splits"]


def test_outliers_flagged_with_the_right_reason_and_kept(messy):
    _, plan, p = messy
    flagged = {e["source"]: " ".join(e["reasons"]) for e in p.report["outliers"]}
    for rel, kind in plan["outliers"].items():
        assert kind in flagged.get(rel, ""), (rel, flagged.get(rel))
        assert rel in _stored(p)
    # the ordinary pictures are not flagged
    ordinary = [r for r in plan["valid"] if r.split("/")[1][1:3].isdigit() and len(r.split("/")[1]) == 7]
    assert len(ordinary) == 48 and not set(ordinary) & set(flagged)


def test_nothing_valid_lost_pixels_and_labels_exact(messy):
    root, plan, p = messy
    stored = _stored(p)
    assert set(stored) == set(plan["valid"])  # odd modes included
    assert sum(len(a) for a in p.arrays.values()) == p.report["kept"] == len(plan["valid"])
    assert p.class_names == ["circles", "squares"] and p.settings["channels"] == 3
    for rel, (split, i) in stored.items():
        im, _, _ = decode_image(root / rel, max_pixels=CFG.max_pixels)
        expect = fit_square(im, p.settings["size"], 3).transpose(2, 0, 1)
        np.testing.assert_array_equal(p.arrays[split][i], expect, err_msg=rel)
        assert p.class_names[p.labels[split][i]] == plan["valid"][rel]


def test_split_stable_when_files_added_and_deterministic(messy, tmp_path):
    root, plan, p = messy
    grown = tmp_path / "grown"
    shutil.copytree(root, grown)
    rng = np.random.default_rng(99)
    (grown / "triangles").mkdir()
    for i in range(15):
        Image.fromarray(smooth_picture(rng, "circle")).save(grown / "circles" / f"new{i}.png")
        Image.fromarray(smooth_picture(rng, "square")).save(grown / "triangles" / f"t{i}.png")
    q = prepare(grown, CFG, progress=False, log=lambda s: None)
    before, after = _stored(p), _stored(q)
    assert len(after) == len(before) + 30
    for rel, (split, _) in before.items():
        assert after[rel][0] == split, rel
    again = prepare(root, CFG, progress=False, log=lambda s: None)
    assert again.items == p.items and again.report == p.report


def test_split_fractions_and_independence():
    shas = [f"{i:064x}" for i in range(20000)]
    splits = np.array([split_of(s, 0.1, 0.2) for s in shas])
    for name, frac in (("val", 0.1), ("test", 0.2)):
        got = (splits == name).mean()
        assert abs(got - frac) < 4 * np.sqrt(frac * (1 - frac) / len(shas)), (name, got)
    assert np.mean([split_of(s, 0.1, 0.2, seed=1) == sp for s, sp in zip(shas, splits)]) < 0.9


def test_drop_outliers_removes_them(messy):
    root, plan, _ = messy
    q = prepare(root, PrepareConfig(max_pixels=100_000, drop_outliers=True), progress=False, log=lambda s: None)
    assert not set(plan["outliers"]) & set(_stored(q))
    assert set(_stored(q)) == set(plan["valid"]) - set(plan["outliers"])
    assert q.report["outliers_removed"]


def test_store_round_trip_and_load_dataset(messy, tmp_path):
    root, _, p = messy
    out, q = prepare_store(root, tmp_path / "store", CFG, progress=False, log=lambda s: None)
    back = read_prepared(out, verify=True)
    assert back.items == p.items and back.class_names == p.class_names
    for s in SPLITS:
        np.testing.assert_array_equal(back.arrays[s], p.arrays[s])
        np.testing.assert_array_equal(back.labels[s], p.labels[s])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["settings"]["size"] == 32 and manifest["settings"]["max_pixels"] == 100_000
    assert sum(manifest["splits"][s]["count"] for s in SPLITS) == q.report["kept"]

    from difforge.config import DataConfig
    from difforge.data import load_dataset

    b = load_dataset(DataConfig(dataset="prepared", path=str(out), val_fraction=0.5))
    assert len(b.train) == len(p.arrays["train"]) and b.class_names == ["circles", "squares"]
    assert b.val is not None and len(b.val) == len(p.arrays["val"])  # the store's split, not 0.5
    assert b.native_size == 32 and b.channels == 3
    np.testing.assert_array_equal(b.train.images.numpy(), p.arrays["train"])


def test_channels_and_size_options(messy):
    root, plan, _ = messy
    q = prepare(root, PrepareConfig(max_pixels=100_000, size=12, channels=1), progress=False, log=lambda s: None)
    assert q.arrays["train"].shape[1:] == (1, 12, 12)
    rel = "circles/c07.png"
    split, i = _stored(q)[rel]
    im, _, _ = decode_image(root / rel)
    np.testing.assert_array_equal(q.arrays[split][i, 0], fit_square(im, 12, 1))


def test_bad_sources_and_settings(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        prepare(tmp_path / "nope")
    (tmp_path / "onlybad").mkdir()
    (tmp_path / "onlybad" / "x.png").write_bytes(b"junk")
    with pytest.raises(ValueError, match="no usable images.*1 quarantined"):
        prepare(tmp_path / "onlybad", progress=False, log=lambda s: None)
    (tmp_path / "f.pdf").write_bytes(b"%PDF")
    with pytest.raises(ValueError, match="unsupported source"):
        prepare(tmp_path / "f.pdf")
    for bad in (dict(size=2), dict(channels=2), dict(val_fraction=0.6, test_fraction=0.5), dict(near_distance=-1)):
        with pytest.raises(ValueError):
            PrepareConfig(**bad)


def test_worker_processes_give_the_same_result(messy):
    root, _, p = messy
    q = prepare(root, PrepareConfig(max_pixels=100_000, workers=2), progress=False, log=lambda s: None)
    assert q.items == p.items and q.report == p.report and q.settings == p.settings
    for s in SPLITS:
        np.testing.assert_array_equal(q.arrays[s], p.arrays[s])


def test_large_jpeg_decoded_at_reduced_scale(tmp_path):
    src = tmp_path / "photos" / "cls"
    src.mkdir(parents=True)
    rng = np.random.default_rng(5)
    grid = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    Image.fromarray(grid).resize((2400, 1800), Image.BICUBIC).save(src / "big.jpg", quality=90)
    Image.fromarray(grid).resize((40, 30), Image.BICUBIC).save(src / "small.jpg", quality=90)
    a = prepare(tmp_path / "photos", PrepareConfig(size=32, val_fraction=0, test_fraction=0), progress=False,
                log=lambda s: None)
    b = prepare(tmp_path / "photos", PrepareConfig(size=64, val_fraction=0, test_fraction=0), progress=False,
                log=lambda s: None)
    cols = a.items["train"]
    i = cols["source"].index("cls/big.jpg")
    assert (cols["width"][i], cols["height"][i]) == (2400, 1800)  # the stored size, not the draft's
    assert cols["sha256"] == b.items["train"]["sha256"]  # the hash does not depend on --size up to 512
    full, _, _ = decode_image(src / "big.jpg")
    exact = fit_square(full, 32, 3).transpose(2, 0, 1).astype(int)
    assert np.abs(a.arrays["train"][i].astype(int) - exact).mean() < 2  # 1/2-scale DCT decode, then Lanczos


def test_drop_near_duplicates_keeps_the_first_of_each_pair(messy):
    root, plan, p = messy
    q = prepare(root, PrepareConfig(max_pixels=100_000, drop_near_duplicates=True), progress=False, log=lambda s: None)
    removed = {e["source"]: e["near"] for e in q.report["near_duplicates"]["removed"]}
    assert removed["circles/c05_brighter.png"] == removed["circles/c05_recompressed.jpg"] == "circles/c05.png"
    assert set(_stored(q)) == set(plan["valid"]) - set(removed)
    assert q.report["near_duplicates"]["pairs"] == p.report["near_duplicates"]["pairs"]  # still all reported
