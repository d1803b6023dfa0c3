"""Sources other than folders (zip, CSV / JSONL manifests, idx), and the store's guards."""

import json
import zipfile

import numpy as np
import pytest
from PIL import Image

from difforge.data.idx import write_idx
from difforge.data.inspect import read_prepared
from difforge.data.prepare import SPLITS, PrepareConfig, prepare, prepare_store
from difforge.data.sources import open_source
from difforge.data.store import is_store, load_store

QUIET = dict(progress=False, log=lambda s: None)


def _png_bytes(value, size=(10, 10)):
    import io

    rng = np.random.default_rng(value)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _all_sources(p):
    return {k: s for s in SPLITS for k in p.items[s]["source"]}


def test_zip_with_class_folders(tmp_path):
    z = tmp_path / "pics.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for i in range(4):
            zf.writestr(f"cat/{i}.png", _png_bytes(i))
            zf.writestr(f"dog/sub/{i}.png", _png_bytes(10 + i))
        zf.writestr("dog/copy.png", _png_bytes(0))  # same pixels as cat/0.png
        zf.writestr("cat/broken.png", b"\x89PNG\r\n\x1a\nnope")
        zf.writestr("readme.txt", "hi")
        zf.writestr("loose.png", _png_bytes(99))
        zf.writestr("__MACOSX/cat/._0.png", b"junk")
    p = prepare(z, PrepareConfig(size=8), **QUIET)
    assert p.class_names == ["cat", "dog"]
    assert set(_all_sources(p)) == {f"zip:cat/{i}.png" for i in range(4)} | {f"zip:dog/sub/{i}.png" for i in range(4)}
    reasons = {e["source"]: e["reason"] for e in p.report["quarantined"]}
    assert set(reasons) == {"zip:cat/broken.png", "zip:readme.txt", "zip:loose.png"}
    assert "class sub-folder" in reasons["zip:loose.png"] and "'.txt'" in reasons["zip:readme.txt"]
    assert "UnidentifiedImageError: cannot identify image file 'cat/broken.png'" in reasons["zip:cat/broken.png"]
    dup = p.report["duplicates"][0]
    assert dup["source"] == "zip:dog/copy.png" and dup["duplicate_of"] == "zip:cat/0.png"
    assert dup["label_conflict"] == ["cat", "dog"]
    q = prepare(z, PrepareConfig(size=8, workers=2), **QUIET)  # worker processes open the zip themselves
    assert q.items == p.items and q.report == p.report
    for s in SPLITS:
        np.testing.assert_array_equal(q.arrays[s], p.arrays[s])


def test_csv_and_jsonl_manifests(tmp_path):
    (tmp_path / "img").mkdir()
    for i in range(6):
        (tmp_path / "img" / f"{i}.png").write_bytes(_png_bytes(i))
    csv = tmp_path / "list.csv"
    csv.write_text("Path,Label\n" + "".join(f"img/{i}.png,{2 if i % 2 else 10}\n" for i in range(6))
                   + "img/missing.png,2\nimg/0.png,\n")
    p = prepare(csv, PrepareConfig(size=8), **QUIET)
    assert p.class_names == ["2", "10"]  # numeric labels sort as numbers
    labels = {k: p.class_names[p.labels[s][i]] for s in SPLITS for i, k in enumerate(p.items[s]["source"])}
    assert labels == {f"img/{i}.png": "2" if i % 2 else "10" for i in range(6)}
    reasons = [e["reason"] for e in p.report["quarantined"]]
    assert any("file not found" in r for r in reasons) and any("no label" in r for r in reasons)

    jl = tmp_path / "list.jsonl"
    jl.write_text("".join(json.dumps({"path": str(tmp_path / "img" / f"{i}.png")}) + "\n" for i in range(6)))
    out, q = prepare_store(jl, tmp_path / "unlabelled", PrepareConfig(size=8, val_fraction=0.4), **QUIET)
    assert q.class_names is None and q.labels is None and len(_all_sources(q)) == 6
    from difforge.config import DataConfig
    from difforge.data import load_dataset

    bundle = load_dataset(DataConfig(dataset="prepared", path=str(out)))
    assert bundle.class_names is None and bundle.train.labels is None
    assert len(bundle.train) + (len(bundle.val) if bundle.val else 0) + (len(bundle.test) if bundle.test else 0) == 6
    (tmp_path / "bad.jsonl").write_text('{"path": "img/0.png"}\nnot json\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not valid JSON"):
        open_source(tmp_path / "bad.jsonl")
    (tmp_path / "nopath.csv").write_text("name,label\na,1\n")
    with pytest.raises(ValueError, match="no path column"):
        open_source(tmp_path / "nopath.csv")


def test_idx_folder_with_class_names(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (30, 6, 6), dtype=np.uint8)
    images[7] = images[3]  # an exact duplicate inside the file
    labels = np.arange(30, dtype=np.uint8) % 3
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", images)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", labels)
    (tmp_path / "classes.txt").write_text("zero\none\ntwo\n")
    p = prepare(tmp_path, **QUIET)
    assert p.settings["size"] == 6 and p.settings["channels"] == 1 and p.class_names == ["zero", "one", "two"]
    assert p.report["duplicates"][0]["source"] == "train-images-idx3-ubyte.gz#7"
    for s in SPLITS:
        for i, key in enumerate(p.items[s]["source"]):
            row = int(key.split("#")[1])
            np.testing.assert_array_equal(p.arrays[s][i, 0], images[row])  # 6 -> 6: no resampling
            assert p.labels[s][i] == labels[row]


def test_store_guards_and_corruption(tmp_path):
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    for i in range(12):
        (src / "a" / f"{i}.png").write_bytes(_png_bytes(i))
    other = tmp_path / "not-a-store"
    other.mkdir()
    (other / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="holds no prepared store"):
        prepare_store(src, other, PrepareConfig(size=8), **QUIET)
    assert (other / "precious.txt").read_text() == "keep me"

    out, _ = prepare_store(src, tmp_path / "store", PrepareConfig(size=8, val_fraction=0.3), **QUIET)
    assert is_store(out) and not is_store(src)
    with pytest.raises(FileExistsError, match="--overwrite"):
        prepare_store(src, out, PrepareConfig(size=8), **QUIET)
    out, _ = prepare_store(src, out, PrepareConfig(size=6), overwrite=True, **QUIET)
    manifest, splits = load_store(out)
    assert splits["train"].size == 6 and not list(tmp_path.glob(".store.*"))

    arr = out / "train_images.npy"
    raw = arr.read_bytes()
    arr.write_bytes(raw[:-1] + bytes([raw[-1] ^ 1]))  # one flipped bit: shape still fine
    load_store(out)
    with pytest.raises(ValueError, match="SHA-256 does not match"):
        read_prepared(out, verify=True)
    arr.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="train_images.npy: corrupt or truncated"):
        load_store(out)
    (out / "manifest.json").write_text('{"format": "difforge-prepared", "version": 99}')
    with pytest.raises(ValueError, match="store version 99"):
        load_store(out)
