"""The garment class of fashion-colour images, measured by a classifier of their luminance
max(R, G, B) (eval/garment.py), on real images."""

from pathlib import Path

import numpy as np
import pytest
import torch

from difforge.config import DataConfig
from difforge.data import FASHION_MNIST_ROOT, DatasetBundle
from difforge.data import fashion_colour as fc
from difforge.eval.attributes import attribute_accuracy, measure_attributes
from difforge.eval.classifier import ClassifierConfig, DomainClassifier, DomainCNN
from difforge.eval.garment import load_or_train_garment_classifier, luminance

DATA = DataConfig(dataset="fashion-colour")


@pytest.fixture(scope="module")
def real():
    """512 real training garments and 300 held-out test garments, drawn in colour."""
    if not Path(FASHION_MNIST_ROOT).is_dir():
        pytest.skip(f"{FASHION_MNIST_ROOT} absent (apt-get install dataset-fashion-mnist)")
    from difforge.data import load_fashion_mnist

    train, test = load_fashion_mnist()
    a = fc.render_fashion_colour(train.images[:512], train.labels[:512], seed=0)
    b = fc.render_fashion_colour(test.images[:300], test.labels[:300], seed=1, heldout=())
    bundle = DatasetBundle(train=a, val=None, test=b, native_size=fc.IMAGE_SIZE, channels=3,
                           class_names=list(fc.GARMENTS))
    return bundle, train.images[:512]


@pytest.fixture(scope="module")
def garments(real, tmp_path_factory):
    """Trained for two epochs on the 512 images (a few seconds), cached in a folder."""
    bundle, _ = real
    folder = tmp_path_factory.mktemp("garment") / "clf"
    logged = []
    clf = load_or_train_garment_classifier(DATA, folder, ClassifierConfig(epochs=2, batch_size=16), bundle=bundle,
                                           log=logged.append)
    assert any("training one" in line for line in logged)
    return clf, folder


def test_luminance_is_the_garments_own_gray_level(real):
    bundle, gray = real
    large = torch.nonzero(bundle.train.attributes["size"] == fc.LARGE).flatten()
    r, c = fc.LARGE_BOX
    lum = luminance(bundle.train.images[large])
    assert torch.equal(lum[:, 0, r:r + fc.LARGE_SIDE, c:c + fc.LARGE_SIDE], gray[large, 0])  # exact, any colour
    with pytest.raises(ValueError, match="uint8 RGB"):
        luminance(bundle.train.images.float())


def test_the_garment_classifier_beats_chance_on_held_out_real_images(real, garments):
    bundle, _ = real
    clf, _ = garments
    # 10 classes: chance is 0.1; measured 0.44 after these 64 steps
    assert clf.test_accuracy >= 0.3, clf.test_accuracy
    assert clf.meta["eval_split"] == "test" and clf.meta["eval_images"] == 300 and clf.meta["channels"] == 1
    measured = measure_attributes(bundle.test.images, garment_classifier=clf)
    acc = attribute_accuracy(measured, bundle.test.attributes)
    assert acc["garment"] == pytest.approx(clf.test_accuracy)  # the same images, through measure_attributes
    right = (measured.garment == bundle.test.labels) & (measured.colour == bundle.test.attributes["colour"])
    assert acc["garment+colour"] == pytest.approx(float(right.double().mean()))


def test_colour_cannot_change_the_garment_class(real, garments):
    """The same garments in other colours (R, G, B permuted: red -> green -> blue, each
    still at HSV value 1) get the same classes."""
    bundle, _ = real
    clf, _ = garments
    images = bundle.train.images[:64]
    recoloured = [images, images[:, [2, 0, 1]], images[:, [1, 2, 0]]]
    hues = [measure_attributes(x).hue for x in recoloured]
    turned = ((hues[1] - hues[0]) % 360 - 120).abs()
    assert int((turned < 1).sum()) == len(images)  # every garment's hue turned by 120 degrees
    predictions = [clf.predict(x) for x in recoloured]
    assert torch.equal(predictions[1], predictions[0]) and torch.equal(predictions[2], predictions[0])


def test_the_classifier_is_cached_and_other_classifiers_are_refused(garments, tmp_path):
    clf, folder = garments
    logged = []
    again = load_or_train_garment_classifier(DATA, folder, bundle=None, log=logged.append)  # no data loaded
    assert not logged and again.meta == clf.meta
    assert np.array_equal(again.logits(torch.zeros(2, 3, 32, 32, dtype=torch.uint8)),
                          clf.logits(torch.zeros(2, 3, 32, 32, dtype=torch.uint8)))
    rgb = DomainClassifier(DomainCNN(3, 10), {**clf.meta, "channels": 3})
    rgb.save(tmp_path / "rgb")
    with pytest.raises(ValueError, match="no garment classifier"):
        load_or_train_garment_classifier(DATA, tmp_path / "rgb")
    with pytest.raises(ValueError, match="fashion-colour"):
        load_or_train_garment_classifier(DataConfig(dataset="fashion-mnist"), folder)
