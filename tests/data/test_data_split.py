"""ImageDataset, the validation split, the uint8 <-> [-1, 1] mapping and load_dataset."""

import numpy as np
import pytest
import torch
from PIL import Image

from difforge.config import DataConfig
from difforge.data import (
    DatasetBundle,
    ImageDataset,
    from_model_output,
    load_dataset,
    split_validation,
    to_model_input,
    write_idx,
)


def _labelled(counts, size=4):
    labels = torch.cat([torch.full((n,), c, dtype=torch.int64) for c, n in enumerate(counts)])
    n = len(labels)
    images = (torch.arange(n * size * size) % 256).to(torch.uint8).view(n, 1, size, size)
    return ImageDataset(images, labels, [f"c{i}" for i in range(len(counts))], "toy")


def test_dataset_properties_subset_and_validation():
    ds = _labelled([3, 2])
    assert len(ds) == 5 and ds.num_classes == 2 and ds.channels == 1 and ds.size == 4
    sub = ds.subset([4, 0])
    assert sub.labels.tolist() == [1, 0] and torch.equal(sub.images[1], ds.images[0])
    assert sub.class_names == ["c0", "c1"] and "n=2" in repr(sub)
    assert len(ds.subset([])) == 0
    with pytest.raises(ValueError, match="uint8"):
        ImageDataset(ds.images.float())
    with pytest.raises(ValueError, match="both"):
        ImageDataset(ds.images, ds.labels)
    with pytest.raises(ValueError, match="0..1"):
        ImageDataset(ds.images, ds.labels + 1, ["a", "b"])
    with pytest.raises(AttributeError):
        ds.name = "x"  # frozen


def test_split_stratified_disjoint_covering_deterministic():
    counts = [50, 31, 2, 1, 7]
    ds = _labelled(counts)
    n = len(ds)  # 91 rows: store each row's index in its pixels to follow it through the split
    rows_img = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).repeat(1, 1, 2, 2)
    tagged = ImageDataset(rows_img, ds.labels, ds.class_names)
    train, val = split_validation(tagged, 0.1, seed=3)
    rows = lambda d: d.images[:, 0, 0, 0].tolist()  # noqa: E731
    assert sorted(rows(train) + rows(val)) == list(range(len(ds)))  # disjoint and covering
    assert rows(train) == sorted(rows(train)) and rows(val) == sorted(rows(val))  # order kept
    # per class: round(0.1 * n), >= 1 if n >= 2, class of 1 stays in train
    assert val.labels.bincount(minlength=5).tolist() == [5, 3, 1, 0, 1]
    assert train.labels.bincount(minlength=5).tolist() == [45, 28, 1, 1, 6]
    again_train, again_val = split_validation(tagged, 0.1, seed=3)
    assert rows(again_val) == rows(val) and rows(again_train) == rows(train)
    other = [rows(split_validation(tagged, 0.1, seed=s)[1]) for s in range(4, 8)]
    assert any(o != rows(val) for o in other)
    train0, val0 = split_validation(tagged, 0.0, seed=3)
    assert len(val0) == 0 and len(train0) == len(ds)
    with pytest.raises(ValueError, match="fraction"):
        split_validation(tagged, 1.0, seed=0)


def test_split_unlabelled():
    images = torch.arange(20, dtype=torch.uint8).view(20, 1, 1, 1).repeat(1, 1, 2, 2)
    train, val = split_validation(ImageDataset(images), 0.25, seed=0)
    assert len(val) == 5 and len(train) == 15 and val.labels is None
    got = torch.cat([train.images, val.images])[:, 0, 0, 0].sort().values
    assert torch.equal(got, torch.arange(20, dtype=torch.uint8))


def test_model_io_round_trip_exact_28_to_32():
    x = torch.arange(256, dtype=torch.uint8).repeat(2 * 3 * 28 * 28 // 256 + 1)[: 2 * 3 * 28 * 28]
    x = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(0))].view(2, 3, 28, 28)
    y = to_model_input(x, 32)
    assert y.shape == (2, 3, 32, 32) and y.dtype == torch.float32
    assert y.min() == -1 and y.max() == 1
    assert (y[..., :2, :] == -1).all() and (y[..., 30:, :] == -1).all()  # 2 px each side
    assert (y[..., :, :2] == -1).all() and (y[..., :, 30:] == -1).all()
    assert torch.equal(y[..., 2:30, 2:30], x.float() / 127.5 - 1)
    assert torch.equal(from_model_output(y, 28), x)
    assert torch.equal(from_model_output(to_model_input(x, 28), 28), x)  # same size: no-op
    odd = to_model_input(x[..., :27, :27], 32)  # odd padding: extra pixel right/bottom
    assert torch.equal(from_model_output(odd, 27), x[..., :27, :27])
    assert (from_model_output(torch.full((1, 1, 4, 4), 5.0), 4) == 255).all()  # clamped
    assert (from_model_output(torch.full((1, 1, 4, 4), -5.0), 4) == 0).all()
    assert from_model_output(y.to(torch.bfloat16), 28).dtype == torch.uint8


def test_model_io_resize_when_larger():
    x = torch.full((1, 1, 64, 64), 200, dtype=torch.uint8)
    y = to_model_input(x, 32)
    assert y.shape == (1, 1, 32, 32) and torch.allclose(y, torch.tensor(200 / 127.5 - 1))
    back = from_model_output(y, 64)
    assert back.shape == (1, 1, 64, 64) and (back == 200).all()
    with pytest.raises(ValueError, match="uint8"):
        to_model_input(x.float(), 32)


def _fake_fashion(root, n_per_class=5):
    n = 10 * n_per_class
    for split in ("train", "t10k"):
        write_idx(root / f"{split}-images-idx3-ubyte.gz", np.zeros((n, 28, 28), np.uint8))
        write_idx(root / f"{split}-labels-idx1-ubyte.gz", (np.arange(n) % 10).astype(np.uint8))


def test_load_dataset_fashion_path_override(tmp_path):
    _fake_fashion(tmp_path)
    b = load_dataset(DataConfig(dataset="fashion-mnist", path=str(tmp_path), val_fraction=0.2))
    assert isinstance(b, DatasetBundle)
    assert len(b.train) == 40 and len(b.val) == 10 and len(b.test) == 50
    assert b.native_size == 28 and b.channels == 1 and b.num_classes == 10 and b.skipped == []
    b3 = load_dataset(DataConfig(dataset="fashion-mnist", path=str(tmp_path), channels=3, val_fraction=0))
    assert b3.val is None and b3.train.images.shape == (50, 3, 28, 28) and b3.test.channels == 3


def test_load_dataset_digits_and_folder_and_unknown(tmp_path):
    pytest.importorskip("sklearn")
    b = load_dataset(DataConfig(dataset="digits", val_fraction=0.1, split_seed=1))
    assert len(b.train) + len(b.val) == 1797 and b.test is None and b.native_size == 8
    assert b.class_names == [str(i) for i in range(10)]
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(4):
            Image.new("RGB", (12, 12), (i * 40, 0, 0)).save(tmp_path / c / f"{i}.png")
    (tmp_path / "a" / "junk.png").write_text("junk")
    b = load_dataset(DataConfig(dataset="folder", path=str(tmp_path), image_size=8, val_fraction=0.25))
    assert b.native_size == 8 and b.channels == 3 and b.class_names == ["a", "b"]
    assert len(b.train) == 6 and len(b.val) == 2 and len(b.skipped) == 1
    with pytest.raises(ValueError, match="unknown dataset 'mnist'"):
        load_dataset(DataConfig(dataset="mnist"))  # DataConfig itself does not validate


def _captioned(counts):
    ds = _labelled(counts)
    n = len(ds)
    return ds.replace(captions=[f"image {i}" for i in range(n)],
                      attributes={"row": torch.arange(n), "twice": 2 * torch.arange(n)})


def test_captions_and_attributes_follow_subset_split_and_channels(tmp_path):
    ds = _captioned([6, 4])
    sub = ds.subset([7, 2, 2])
    assert sub.captions == ["image 7", "image 2", "image 2"] and sub.attributes["row"].tolist() == [7, 2, 2]
    assert sub.attributes["twice"].tolist() == [14, 4, 4] and "captioned" in repr(sub)
    assert ds.subset([]).captions == [] and len(ds.subset([]).attributes["row"]) == 0
    train, val = split_validation(ds, 0.3, seed=1)
    for part in (train, val):  # each image still carries its own caption and attributes
        rows = part.attributes["row"].tolist()
        assert part.captions == [f"image {i}" for i in rows]
        assert part.attributes["twice"].tolist() == [2 * i for i in rows]
    assert sorted(train.attributes["row"].tolist() + val.attributes["row"].tolist()) == list(range(10))
    from difforge.data.dataset import _with_channels

    rgb = _with_channels(ds, 3)
    assert rgb.channels == 3 and rgb.captions == ds.captions
    assert torch.equal(rgb.attributes["row"], ds.attributes["row"])


def test_captions_and_attributes_are_validated():
    ds = _labelled([2, 1])
    with pytest.raises(ValueError, match="one string per image: 2 for 3 images"):
        ds.replace(captions=["a", "b"])
    with pytest.raises(ValueError, match="list of strings"):
        ds.replace(captions="abc")
    with pytest.raises(ValueError, match="list of strings"):
        ds.replace(captions=["a", None, "c"])
    with pytest.raises(ValueError, match="attribute 'colour' must be int64 \\(3,\\)"):
        ds.replace(attributes={"colour": torch.zeros(2, dtype=torch.int64)})
    with pytest.raises(ValueError, match="attribute 'colour' must be int64"):
        ds.replace(attributes={"colour": torch.zeros(3)})
    kept = ds.replace(captions=("x", "y", "z"))  # any sequence; stored as a list of its own
    assert kept.captions == ["x", "y", "z"] and ds.captions is None
