"""The Fashion-MNIST subset shipped inside the package (the default, offline data set).

2,000 images, 28x28 grey, class-balanced: 100 per class from the official training set and 100
per class from the official test set (rebuilt by ``scripts/build_embedded_data.py``).
Splits: ``train`` = the first 80 per class of the training pool (in source order), ``val`` =
the remaining 20 per class, ``test`` = the 100 per class from the official test set.
Fashion-MNIST is (c) 2017 Zalando SE, MIT licence (``_embedded/LICENSE-fashion-mnist.txt``).
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

import numpy as np

from pyro_clip.data.arrays import ArrayImages
from pyro_clip.errors import DataError

#: natural class names (index = Fashion-MNIST label); these are what zero-shot prompts see
FASHION_MNIST_CLASSNAMES: list[str] = [
    "t-shirt",
    "trousers",
    "sweater",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "handbag",
    "ankle boot",
]
SPLITS = ("train", "val", "test")
TRAIN_PER_CLASS = 80
_ARCHIVE = "fashion_mnist_subset.npz"


@lru_cache(maxsize=1)
def _archive() -> dict[str, np.ndarray]:
    """The shipped arrays, read once (white-on-black, as in the original files)."""
    ref = resources.files("pyro_clip.data").joinpath("_embedded").joinpath(_ARCHIVE)
    with resources.as_file(ref) as path, np.load(path, allow_pickle=False) as npz:
        arrays = {key: npz[key] for key in npz.files}
    for arr in arrays.values():
        arr.setflags(write=False)
    return arrays


def _first_per_class(labels: np.ndarray, count: int) -> np.ndarray:
    """Boolean mask of the first ``count`` occurrences of each label, in array order."""
    mask = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        mask[np.flatnonzero(labels == c)[:count]] = True
    return mask


def embedded_arrays(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Raw ``(images, labels)`` of one split: uint8 ``(N, 28, 28)``, white garment on black."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose one of {list(SPLITS)}")
    arrays = _archive()
    if split == "test":
        return arrays["test_images"], arrays["test_labels"]
    labels = arrays["train_labels"]
    mask = _first_per_class(labels, TRAIN_PER_CLASS)
    if split == "val":
        mask = ~mask
    return arrays["train_images"][mask], labels[mask]


def load_embedded(split: str, invert: bool = True) -> ArrayImages:
    """The embedded Fashion-MNIST subset, one split, as RGB 28x28 images.

    Args:
        split: ``"train"`` (800 images), ``"val"`` (200) or ``"test"`` (1,000); balanced.
        invert: return dark garments on a light background (``255 - x``); natural-photo
            backbones recognise these better than the original white-on-black.
    """
    images, labels = embedded_arrays(split)
    if invert:
        images = 255 - images
    return ArrayImages(
        images,
        labels,
        FASHION_MNIST_CLASSNAMES,
        name=f"fashion-mnist/{split}",
        tag=f"fashion-mnist invert={int(invert)}",
    )
