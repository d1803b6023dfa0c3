"""IDX reading/writing and the Fashion-MNIST / digits loaders."""

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from difforge.data import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_ROOT,
    load_digits,
    load_fashion_mnist,
    read_idx,
    write_idx,
)


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_round_trip_images_and_labels(tmp_path, suffix):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, size=(5,), dtype=np.uint8)
    write_idx(tmp_path / f"img{suffix}", images)
    write_idx(tmp_path / f"lab{suffix}", labels)
    raw = (tmp_path / f"img{suffix}").read_bytes()
    assert raw[:2] == (b"\x1f\x8b" if suffix else b"\x00\x00")
    if not suffix:  # header: 0 0 0x08 3, then big-endian dims
        assert raw[:16] == bytes([0, 0, 8, 3, 0, 0, 0, 5, 0, 0, 0, 7, 0, 0, 0, 3])
    np.testing.assert_array_equal(read_idx(tmp_path / f"img{suffix}"), images)
    out = read_idx(tmp_path / f"lab{suffix}")
    assert out.shape == (5,) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, labels)


def test_idx_gzip_detected_by_magic_not_name(tmp_path):
    a = np.arange(12, dtype=np.uint8).reshape(3, 4)
    write_idx(tmp_path / "a.gz", a)
    (tmp_path / "a.gz").rename(tmp_path / "plain-name")
    np.testing.assert_array_equal(read_idx(tmp_path / "plain-name"), a)


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.float32, np.float64])
def test_idx_other_dtypes_big_endian(tmp_path, dtype):
    a = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    write_idx(tmp_path / "x", a)
    out = read_idx(tmp_path / "x")
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    np.testing.assert_array_equal(out, a)


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_truncated_idx_names_file(tmp_path, suffix):
    path = tmp_path / f"short{suffix}"
    payload = bytes([0, 0, 8, 2, 0, 0, 0, 4, 0, 0, 0, 4]) + bytes(10)  # needs 16 bytes
    path.write_bytes(gzip.compress(payload) if suffix else payload)
    with pytest.raises(ValueError, match="truncated") as e:
        read_idx(path)
    assert str(path) in str(e.value)


def test_truncated_gzip_stream(tmp_path):
    write_idx(tmp_path / "a.gz", np.zeros((100, 28, 28), np.uint8))
    raw = (tmp_path / "a.gz").read_bytes()
    (tmp_path / "a.gz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="a.gz.*truncated"):
        read_idx(tmp_path / "a.gz")


def test_trailing_bytes_and_bad_magic_and_dtype(tmp_path):
    ok = bytes([0, 0, 8, 1, 0, 0, 0, 2, 1, 2])
    (tmp_path / "trail").write_bytes(ok + b"x")
    with pytest.raises(ValueError, match="trail"):
        read_idx(tmp_path / "trail")
    (tmp_path / "magic").write_bytes(b"\x89PNG" + ok[4:])
    with pytest.raises(ValueError, match="magic.*") as e:
        read_idx(tmp_path / "magic")
    assert "magic" in str(e.value) and str(tmp_path / "magic") in str(e.value)
    (tmp_path / "code").write_bytes(bytes([0, 0, 0x42, 1, 0, 0, 0, 2, 1, 2]))
    with pytest.raises(ValueError, match="dtype code 0x42"):
        read_idx(tmp_path / "code")
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        read_idx(tmp_path / "empty")


def _fake_fashion(root: Path, n_train=6, n_test=4, gz=True):
    rng = np.random.default_rng(1)
    ext = ".gz" if gz else ""
    for split, n in (("train", n_train), ("t10k", n_test)):
        write_idx(root / f"{split}-images-idx3-ubyte{ext}", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(root / f"{split}-labels-idx1-ubyte{ext}", (np.arange(n) % 10).astype(np.uint8))


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_from_any_folder(tmp_path, gz):
    _fake_fashion(tmp_path, gz=gz)
    train, test = load_fashion_mnist(tmp_path)
    assert train.images.shape == (6, 1, 28, 28) and test.images.shape == (4, 1, 28, 28)
    assert train.labels.dtype == torch.int64 and train.labels.tolist() == [0, 1, 2, 3, 4, 5]
    assert train.class_names == FASHION_MNIST_CLASSES and train.num_classes == 10


def test_fashion_mnist_missing_folder_and_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist") as e:
        load_fashion_mnist(tmp_path / "nope")
    assert "\n" not in str(e.value) and "--data" in str(e.value)
    _fake_fashion(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"t10k-labels-idx1-ubyte\[\.gz\]"):
        load_fashion_mnist(tmp_path)


def test_fashion_mnist_label_count_mismatch(tmp_path):
    _fake_fashion(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(5, np.uint8))
    with pytest.raises(ValueError, match="expected 6 labels"):
        load_fashion_mnist(tmp_path)


def test_fashion_mnist_debian_package():
    if not Path(FASHION_MNIST_ROOT).is_dir():
        pytest.skip(f"{FASHION_MNIST_ROOT} absent (apt-get install dataset-fashion-mnist)")
    train, test = load_fashion_mnist()
    assert train.images.shape == (60000, 1, 28, 28) and train.images.dtype == torch.uint8
    assert test.images.shape == (10000, 1, 28, 28)
    assert train.labels.shape == (60000,) and test.labels.shape == (10000,)
    assert int(train.labels.min()) == 0 and int(train.labels.max()) == 9
    assert train.labels.bincount().tolist() == [6000] * 10
    assert int(train.images.max()) == 255 and int(train.images.min()) == 0


def test_digits_shapes_and_scaling():
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_digits as sk

    ds = load_digits()
    assert ds.images.shape == (1797, 1, 8, 8) and ds.images.dtype == torch.uint8
    assert ds.class_names == [str(i) for i in range(10)] and ds.labels.shape == (1797,)
    raw = torch.from_numpy(sk().images).unsqueeze(1)
    for v, expect in ((0, 0), (8, 128), (16, 255), (1, 16), (15, 239)):
        assert (ds.images[raw == v] == expect).all()
    assert torch.equal(ds.images, torch.floor(raw * 255 / 16 + 0.5).to(torch.uint8))
