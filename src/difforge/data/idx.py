"""IDX files (the MNIST / Fashion-MNIST container format) and the Fashion-MNIST loader.

IDX layout (LeCun et al., http://yann.lecun.com/exdb/mnist/): two zero bytes, a dtype
code, the number of dimensions, then one big-endian uint32 per dimension, then the
payload in big-endian order. Files may be gzip-compressed; that is detected from the
first bytes, not from the file name.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import torch

from difforge.data.dataset import ImageDataset

# IDX dtype code -> big-endian numpy dtype
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"

FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
_HOW_TO_GET = (
    "install it with `apt-get install dataset-fashion-mnist` "
    "or pass --data PATH (a folder with the four idx files)"
)
_FASHION_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (raw or gzip) into a native-endian numpy array.

    Raises ValueError naming the file when the magic number, dtype code or payload
    length (truncated or trailing bytes) do not match the header.
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as e:
            raise ValueError(f"{path}: corrupt or truncated gzip stream ({e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic number {raw[:4].hex() or 'empty'})")
    code, ndim = raw[2], raw[3]
    if code not in IDX_DTYPES:
        raise ValueError(
            f"{path}: unknown IDX dtype code 0x{code:02x}; expected one of "
            f"{[f'0x{c:02x}' for c in IDX_DTYPES]}"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(raw)} bytes, need {header})")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = IDX_DTYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    found = len(raw) - header
    if found != expected:
        what = "truncated" if found < expected else "trailing bytes in"
        raise ValueError(
            f"{path}: {what} IDX file: header {shape} x {dtype.itemsize} B needs {expected} "
            f"payload bytes, found {found}"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="), copy=True)  # writable, native order


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write `array` as an IDX file; gzip-compressed when `path` ends in `.gz`."""
    path = Path(path)
    array = np.asarray(array)
    codes = {dt.newbyteorder("="): c for c, dt in IDX_DTYPES.items()}
    native = array.dtype.newbyteorder("=")
    if native not in codes:
        expected = sorted(str(dt) for dt in codes)
        raise ValueError(f"dtype {array.dtype} has no IDX code; expected one of {expected}")
    if array.ndim > 255:
        raise ValueError(f"IDX supports at most 255 dimensions, got {array.ndim}")
    be = IDX_DTYPES[codes[native]]
    head = bytes([0, 0, codes[native], array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    payload = head + np.ascontiguousarray(array, dtype=be).tobytes()
    if path.name.endswith(".gz"):
        payload = gzip.compress(payload, mtime=0)
    path.write_bytes(payload)


def _find(root: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (root / name).is_file():
            return root / name
    raise FileNotFoundError(f"Fashion-MNIST file {stem}[.gz] not found in {root}: {_HOW_TO_GET}")


def load_fashion_mnist(root: str | Path | None = None) -> tuple[ImageDataset, ImageDataset]:
    """Fashion-MNIST (Xiao et al. 2017) as (train 60k, test 10k) uint8 datasets, 1x28x28.

    `root` defaults to the Debian package's folder /usr/share/datasets/fashion-mnist;
    any folder with the four files (gzip or raw) works.
    """
    root = Path(root if root is not None else FASHION_MNIST_ROOT)
    if not root.is_dir():
        raise FileNotFoundError(f"Fashion-MNIST folder {root} not found: {_HOW_TO_GET}")
    paths = {key: _find(root, stem) for key, stem in _FASHION_FILES.items()}
    out = []
    for split in ("train", "test"):
        images = read_idx(paths[f"{split}_images"])
        labels = read_idx(paths[f"{split}_labels"])
        if images.dtype != np.uint8 or images.ndim != 3:
            raise ValueError(
                f"{paths[f'{split}_images']}: expected uint8 (N, H, W) images, "
                f"got {images.dtype} {images.shape}"
            )
        if labels.ndim != 1 or len(labels) != len(images):
            raise ValueError(
                f"{paths[f'{split}_labels']}: expected {len(images)} labels, got shape {labels.shape}"
            )
        if len(labels) and int(labels.max()) >= len(FASHION_MNIST_CLASSES):
            raise ValueError(f"{paths[f'{split}_labels']}: label {int(labels.max())} out of range 0..9")
        out.append(
            ImageDataset(
                images=torch.from_numpy(images).unsqueeze(1),  # (N, 1, H, W)
                labels=torch.from_numpy(labels.astype(np.int64)),
                class_names=list(FASHION_MNIST_CLASSES),
                name="fashion-mnist",
            )
        )
    return out[0], out[1]
