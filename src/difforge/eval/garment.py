"""The garment class of fashion-colour images, measured from pixels.

Every fashion-colour colour has HSV value 1: one of its R, G, B is 255, so the largest
channel of each pixel, max(R, G, B), is exactly the gray level of the Fashion-MNIST
garment it was drawn from (`data/fashion_colour.py` scales the colour by that level).
The garment classifier is a domain classifier (`eval.classifier.DomainCNN`) trained on
that one channel at 32x32, so the colour cannot take part in its decision: the same
garment in any two colours gets the same class.

It is trained once on the real training split and cached beside the domain classifiers
as `$DIFFORGE_CACHE/classifiers/<dataset-key>-garment/`; its accuracy on the real test
split is the ceiling for the garment accuracy of generated images.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from difforge.config import DataConfig
from difforge.data import DatasetBundle, ImageDataset
from difforge.data.fashion_colour import GARMENTS, IMAGE_SIZE
from difforge.data.fashion_colour import NAME as FASHION_COLOUR
from difforge.eval.classifier import ClassifierConfig, DomainClassifier

VIEW = "max(R,G,B)"  # the input the classifier sees, in its description


def luminance(images: torch.Tensor) -> torch.Tensor:
    """uint8 RGB images (N, 3, H, W) -> their largest channel, uint8 (N, 1, H, W): for
    fashion-colour the garment's gray level, exactly."""
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.ndim != 4 \
            or images.shape[1] != 3:
        got = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"expected uint8 RGB images (N, 3, H, W), got {got}")
    return images.max(1, keepdim=True).values


def _luminance_split(ds: ImageDataset | None) -> ImageDataset | None:
    if ds is None:
        return None
    return ImageDataset(images=luminance(ds.images), labels=ds.labels, class_names=ds.class_names,
                        name=f"{ds.name} {VIEW}")


def luminance_bundle(bundle: DatasetBundle) -> DatasetBundle:
    """The bundle's splits as their luminance (one channel), labels kept (no captions)."""
    return DatasetBundle(train=_luminance_split(bundle.train), val=_luminance_split(bundle.val),
                         test=_luminance_split(bundle.test), native_size=bundle.native_size, channels=1,
                         class_names=bundle.class_names)


class GarmentClassifier:
    """A garment classifier of RGB fashion-colour images: a `DomainClassifier` of their
    luminance (`clf`)."""

    def __init__(self, clf: DomainClassifier):
        self.clf = clf

    @property
    def meta(self) -> dict:
        return self.clf.meta

    @property
    def test_accuracy(self) -> float:
        return self.clf.test_accuracy

    def logits(self, images: torch.Tensor) -> np.ndarray:
        return self.clf.logits(luminance(images))

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """The garment class (index into `fashion_colour.GARMENTS`) of each uint8 RGB image, int64 (N,)."""
        return torch.from_numpy(self.logits(images).argmax(1)).to(torch.int64)

    def describe(self, directory: str | Path | None = None) -> dict:
        """What a report says of it: the held-out accuracy, on how many images, the input."""
        m = self.meta
        return {"test_accuracy": m["test_accuracy"], "eval_split": m["eval_split"], "eval_images": m["eval_images"],
                "train_images": m["train_images"], "epochs": m["epochs"], "input": VIEW,
                "dir": None if directory is None else str(directory)}


def garment_classifier_dir(data: DataConfig) -> Path:
    from difforge.eval.classifier import cache_root, dataset_key

    return cache_root() / "classifiers" / f"{dataset_key(data)}-garment"


def check_garment_data(data: DataConfig) -> None:
    if data.dataset != FASHION_COLOUR:
        raise ValueError(f"the garment classifier reads fashion-colour images (every colour at HSV value 1); "
                         f"this data is {data.dataset}")


def load_or_train_garment_classifier(
    data: DataConfig,
    directory: str | Path | None = None,
    cfg: ClassifierConfig = ClassifierConfig(),
    *,
    bundle: DatasetBundle | None = None,
    device: torch.device | str = "cpu",
    log: Callable[[str], None] | None = None,
) -> GarmentClassifier:
    """The cached garment classifier of fashion-colour `data` (in `directory`, default
    `garment_classifier_dir(data)`), trained there first on the luminance of the training
    split (`bundle`, default: `data` loaded) when there is none."""
    from difforge.eval.classifier import dataset_key, is_classifier_dir, load_classifier, load_or_train_classifier

    check_garment_data(data)
    directory = Path(directory) if directory is not None else garment_classifier_dir(data)
    if is_classifier_dir(directory):
        clf = load_classifier(directory, device)
    else:
        if bundle is None:
            from difforge.data import load_dataset

            bundle = load_dataset(data)
        clf = load_or_train_classifier(data, directory, cfg, bundle=luminance_bundle(bundle), device=device,
                                       log=log, name=f"{dataset_key(data)} garment ({VIEW})")
    shape = (clf.meta["channels"], clf.meta["image_size"])
    if clf.class_names != list(GARMENTS) or shape != (1, IMAGE_SIZE):
        raise ValueError(f"{directory} holds no garment classifier of fashion-colour luminance "
                         f"(it takes {shape[0]}x{shape[1]}x{shape[1]} images of {clf.meta.get('dataset')})")
    return GarmentClassifier(clf)
