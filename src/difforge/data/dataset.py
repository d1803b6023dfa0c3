"""In-memory uint8 image datasets, the validation split, and the pixel <-> model mapping.

Every dataset is held in memory as one uint8 tensor (N, C, H, W) with square images;
conversion to the model's float range [-1, 1] happens per batch (`to_model_input`), so a
loader can move uint8 (4x smaller) to the device first.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch

from difforge.io.space import from_model_output, to_model_input  # noqa: F401 - re-exported


@dataclass(frozen=True, eq=False, repr=False)
class ImageDataset:
    """Images as uint8 (N, C, H, W), optional int64 labels (N,) and their class names,
    optional captions and optional per-image attributes.

    `labels` and `class_names` are both given (labelled) or both None (unlabelled);
    labels index `class_names`. `captions` holds one string per image (text-to-image
    data). `attributes` maps a name to an int64 (N,) tensor of per-image facts that
    evaluation checks (e.g. the colour index of a generated set's garments). Every
    operation that selects or converts images (`subset`, `split_validation`, the
    channel conversion of `load_dataset`) keeps captions and attributes aligned.
    """

    images: torch.Tensor
    labels: torch.Tensor | None = None
    class_names: list[str] | None = None
    name: str = "images"
    captions: list[str] | None = None
    attributes: dict[str, torch.Tensor] | None = None

    layout: ClassVar[str] = "(N, C, H, W)"  # what one sample of `images` is; VideoDataset: clips

    def __post_init__(self) -> None:
        x, y = self.images, self.labels
        if not isinstance(x, torch.Tensor) or x.dtype != torch.uint8 or x.ndim != self.layout.count(",") + 1:
            got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"images must be a uint8 tensor {self.layout}, got {got}")
        if x.shape[1] not in (1, 3):
            raise ValueError(f"images must have 1 or 3 channels, got {x.shape[1]}")
        if (y is None) != (self.class_names is None):
            raise ValueError("labels and class_names must both be given or both be None")
        if y is not None:
            if y.dtype != torch.int64 or y.shape != (x.shape[0],):
                raise ValueError(f"labels must be int64 ({x.shape[0]},), got {y.dtype} {tuple(y.shape)}")
            if len(y) and (int(y.min()) < 0 or int(y.max()) >= len(self.class_names)):
                raise ValueError(
                    f"labels must lie in 0..{len(self.class_names) - 1}, "
                    f"got {int(y.min())}..{int(y.max())}"
                )
            object.__setattr__(self, "class_names", list(self.class_names))
        if self.captions is not None:
            if isinstance(self.captions, str) or not all(isinstance(c, str) for c in self.captions):
                raise ValueError("captions must be a list of strings, one per image")
            if len(self.captions) != x.shape[0]:
                raise ValueError(
                    f"captions must have one string per image: {len(self.captions)} for {x.shape[0]} images"
                )
            object.__setattr__(self, "captions", list(self.captions))
        if self.attributes is not None:
            for key, a in self.attributes.items():
                if not isinstance(a, torch.Tensor) or a.dtype != torch.int64 or a.shape != (x.shape[0],):
                    got = f"{a.dtype} {tuple(a.shape)}" if isinstance(a, torch.Tensor) else type(a).__name__
                    raise ValueError(f"attribute {key!r} must be int64 ({x.shape[0]},), got {got}")
            object.__setattr__(self, "attributes", dict(self.attributes))

    def __len__(self) -> int:
        return self.images.shape[0]

    def __repr__(self) -> str:
        return (
            f"ImageDataset(name={self.name!r}, n={len(self)}, channels={self.channels}, "
            f"size={self.images.shape[-2]}x{self.images.shape[-1]}, num_classes={self.num_classes}"
            + (", captioned" if self.captions is not None else "")
            + (f", attributes={sorted(self.attributes)}" if self.attributes else "")
            + ")"
        )

    @property
    def num_classes(self) -> int | None:
        return None if self.class_names is None else len(self.class_names)

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def size(self) -> int:
        return self.images.shape[-1]

    def subset(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> ImageDataset:
        """The images (and labels, captions, attributes) at `indices`, in that order; copies."""
        idx = torch.as_tensor(np.asarray(indices) if not isinstance(indices, torch.Tensor) else indices)
        return self.replace(**self._selected(idx.to(torch.int64).reshape(-1)))

    def _selected(self, idx: torch.Tensor) -> dict:
        """The per-sample fields at the int64 indices `idx` (what `subset` replaces)."""
        return dict(
            images=self.images.index_select(0, idx),
            labels=None if self.labels is None else self.labels.index_select(0, idx),
            captions=None if self.captions is None else [self.captions[i] for i in idx.tolist()],
            attributes=None if self.attributes is None else {
                k: a.index_select(0, idx) for k, a in self.attributes.items()},
        )

    def replace(self, **changes) -> ImageDataset:
        """A copy with `changes` (field name -> value); every other field is carried over.
        The one way to rebuild a dataset from another, so that no field is forgotten."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True, eq=False, repr=False)
class VideoDataset(ImageDataset):
    """Clips as uint8 (N, C, T, H, W): a sample is a clip of T frames. Labels, captions and
    attributes are per clip, as an ImageDataset's are per image. `trajectories`, when known
    (a synthetic set), are float32 (N, K, T, 2): the (row, column) of the top-left corner of
    each of the clip's K objects in every frame, NaN for an object a clip does not have;
    `subset` keeps them aligned."""

    trajectories: torch.Tensor | None = None

    layout: ClassVar[str] = "(N, C, T, H, W)"

    def __post_init__(self) -> None:
        super().__post_init__()
        tr = self.trajectories
        if tr is not None and (not isinstance(tr, torch.Tensor) or tr.ndim != 4 or tr.shape[0] != len(self)
                               or tr.shape[2] != self.frames or tr.shape[3] != 2):
            got = tuple(tr.shape) if isinstance(tr, torch.Tensor) else type(tr).__name__
            raise ValueError(f"trajectories must be (N, K, T, 2) = ({len(self)}, K, {self.frames}, 2), got {got}")

    @property
    def frames(self) -> int:
        return self.images.shape[2]

    def __repr__(self) -> str:
        return super().__repr__().replace("ImageDataset(", "VideoDataset(", 1).replace(
            ", size=", f", frames={self.frames}, size=", 1)

    def _selected(self, idx: torch.Tensor) -> dict:
        tr = self.trajectories
        return {**super()._selected(idx), "trajectories": None if tr is None else tr.index_select(0, idx)}


def _val_count(fraction: float, n: int) -> int:
    """round(fraction * n) (halves up); >= 1 when fraction > 0 and n >= 2; <= n - 1."""
    if n < 2 or fraction <= 0:
        return 0
    return min(n - 1, max(1, math.floor(fraction * n + 0.5)))


def split_validation(ds: ImageDataset, fraction: float, seed: int) -> tuple[ImageDataset, ImageDataset]:
    """Split `ds` into (train, val), deterministic given `seed`, disjoint and covering `ds`.

    Labelled data is stratified: each class gives round(fraction * count) of its images to
    val, at least 1 when fraction > 0 and the class has >= 2 images, and always keeps at
    least one in train. Unlabelled data follows the same rule over the whole set.
    Both parts keep the original order; fraction 0 gives an empty val.
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"validation fraction must be in [0, 1), got {fraction}")
    g = torch.Generator().manual_seed(seed)
    if ds.labels is None:
        groups = [torch.arange(len(ds))]
    else:
        groups = [torch.nonzero(ds.labels == c).flatten() for c in range(ds.num_classes)]
    val_parts, train_parts = [], []
    for idx in groups:
        perm = idx[torch.randperm(len(idx), generator=g)]
        k = _val_count(fraction, len(idx))
        val_parts.append(perm[:k])
        train_parts.append(perm[k:])
    train_idx = torch.cat(train_parts).sort().values
    val_idx = torch.cat(val_parts).sort().values
    return ds.subset(train_idx), ds.subset(val_idx)


@dataclass(frozen=True, eq=False)
class DatasetBundle:
    """What `load_dataset` returns: the splits and their shared shape facts."""

    train: ImageDataset
    val: ImageDataset | None  # None when val_fraction is 0
    test: ImageDataset | None  # only Fashion-MNIST ships a test split
    native_size: int  # side of the stored images (28 for Fashion-MNIST)
    channels: int
    class_names: list[str] | None
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason), folders only

    @property
    def num_classes(self) -> int | None:
        return None if self.class_names is None else len(self.class_names)


def _with_channels(ds: ImageDataset, channels: int | None) -> ImageDataset:
    """Grayscale -> RGB by repeating the channel when 3 channels are asked for."""
    if channels is None or channels == ds.channels:
        return ds
    if channels == 3 and ds.channels == 1:
        return ds.replace(images=ds.images.repeat(1, 3, *(1,) * (ds.images.ndim - 2)))
    raise ValueError(f"dataset {ds.name!r} has {ds.channels} channel(s); cannot give {channels}")
