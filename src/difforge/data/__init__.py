"""Image data: loaders (IDX / Fashion-MNIST, fashion-colour, scikit-learn digits, image folders), the
validation split, and the uint8 <-> model-range mapping. Everything is held in memory
as uint8 tensors (N, C, H, W)."""

from difforge.data.dataset import (
    DatasetBundle,
    ImageDataset,
    from_model_output,
    split_validation,
    to_model_input,
)
from difforge.data.digits import DIGITS_CLASSES, load_digits
from difforge.data.fashion_colour import load_fashion_colour
from difforge.data.folder import IMAGE_EXTENSIONS, load_image_folder
from difforge.data.idx import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_ROOT,
    load_fashion_mnist,
    read_idx,
    write_idx,
)
from difforge.data.load import load_dataset

__all__ = [
    "DIGITS_CLASSES",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_ROOT",
    "IMAGE_EXTENSIONS",
    "DatasetBundle",
    "ImageDataset",
    "from_model_output",
    "load_dataset",
    "load_digits",
    "load_fashion_colour",
    "load_fashion_mnist",
    "load_image_folder",
    "read_idx",
    "split_validation",
    "to_model_input",
    "write_idx",
]
