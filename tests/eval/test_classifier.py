"""The domain classifier on the digits set: trains, saves/loads exactly, caches by dataset."""

import json

import numpy as np
import pytest
import torch

from difforge.config import DataConfig
from difforge.data import load_dataset
from difforge.eval.classifier import (
    ClassifierConfig,
    DomainCNN,
    cache_root,
    classifier_dir,
    dataset_key,
    default_epochs,
    load_classifier,
    load_or_train_classifier,
)

DIGITS = DataConfig(dataset="digits")
FAST = ClassifierConfig(epochs=12)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DIFFORGE_CACHE", str(root))
        lines = []
        clf = load_or_train_classifier(DIGITS, cfg=FAST, log=lines.append)
        assert any("training one" in line for line in lines)
        return clf, root


def test_trains_to_high_accuracy_and_is_cached_by_dataset(trained):
    clf, root = trained
    assert clf.test_accuracy > 0.85
    assert clf.meta["eval_split"] == "val" and clf.meta["epochs"] == 12
    path = root / "classifiers" / "digits"
    meta = json.loads((path / "classifier.json").read_text())
    assert meta["class_names"] == [str(d) for d in range(10)] and meta["feature_dim"] == 128
    assert meta["data"]["dataset"] == "digits" and (path / "model.safetensors").is_file()


def test_features_are_unit_scale_and_round_trip(trained, monkeypatch):
    clf, root = trained
    val = load_dataset(DIGITS).val
    f, z = clf.features_and_logits(val.images)
    assert f.shape == (len(val), 128) and f.dtype == np.float64 and z.shape == (len(val), 10)
    assert np.mean(f**2) == pytest.approx(1.0, rel=1e-6)  # the stored feature_scale
    monkeypatch.setenv("DIFFORGE_CACHE", str(root))
    again = load_or_train_classifier(DIGITS, log=lambda s: pytest.fail("retrained: " + s))  # from the cache
    np.testing.assert_allclose(again.features(val.images), f, rtol=1e-6, atol=1e-9)
    # the same batch: a float32 matmul over 5 rows may round differently from one over all rows
    np.testing.assert_allclose(again.logits(val.images), z, rtol=1e-6, atol=1e-9)


def test_wrong_images_and_broken_directories(trained, tmp_path):
    clf, _ = trained
    with pytest.raises(ValueError, match="this classifier takes 1x8x8"):
        clf.features(torch.zeros(2, 1, 28, 28, dtype=torch.uint8))
    with pytest.raises(ValueError, match="uint8"):
        clf.features(torch.zeros(2, 1, 8, 8))
    with pytest.raises(FileNotFoundError, match="no classifier in"):
        load_classifier(tmp_path)
    (tmp_path / "classifier.json").write_text('{"format": "difforge-classifier", "channels": 1}')
    (tmp_path / "model.safetensors").write_bytes(b"junk")
    with pytest.raises(ValueError, match="cannot load classifier"):
        load_classifier(tmp_path)


def test_dataset_keys_and_cache_root(monkeypatch, tmp_path):
    assert dataset_key(DataConfig()) == "fashion-mnist" and dataset_key(DIGITS) == "digits"
    assert dataset_key(DataConfig(dataset="digits", val_fraction=0.2)).startswith("digits-")
    folder = dataset_key(DataConfig(dataset="folder", path=str(tmp_path / "my cats")))
    assert folder.startswith("my_cats-") and folder != dataset_key(DataConfig(dataset="folder", path=str(tmp_path)))
    monkeypatch.setenv("DIFFORGE_CACHE", str(tmp_path))
    assert cache_root() == tmp_path and classifier_dir(DIGITS) == tmp_path / "classifiers" / "digits"
    monkeypatch.delenv("DIFFORGE_CACHE")
    assert str(cache_root()).endswith(".cache/difforge")


def test_architecture_takes_any_size_and_default_epochs():
    net = DomainCNN(3, 4)
    for size in (8, 28, 64):
        assert net(torch.zeros(2, 3, size, size)).shape == (2, 4)
    assert default_epochs(54_000, 128) == 5 and default_epochs(1617, 128) == 100 and default_epochs(20_000, 128) == 8


def test_unlabelled_data_is_refused(tmp_path):
    from PIL import Image

    for i in range(4):
        Image.new("L", (8, 8), i * 40).save(tmp_path / f"{i}.png")
    with pytest.raises(ValueError, match="no labels"):
        load_or_train_classifier(DataConfig(dataset="folder", path=str(tmp_path)), tmp_path / "clf", FAST)
