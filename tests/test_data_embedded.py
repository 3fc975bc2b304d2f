"""The shipped Fashion-MNIST subset: sizes, balance, pixels, provenance, fingerprints."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from pyro_clip.data import ArrayImages, load_dataset, load_embedded
from pyro_clip.errors import DataError

ARCHIVE = Path(__file__).parents[1] / "pyro_clip/data/_embedded/fashion_mnist_subset.npz"
LICENSE = ARCHIVE.parent / "LICENSE-fashion-mnist.txt"
IDX_DIR = Path("/usr/share/datasets/fashion-mnist")


def _raw() -> dict[str, np.ndarray]:
    with np.load(ARCHIVE) as npz:
        return {k: npz[k] for k in npz.files}


@pytest.mark.parametrize(("split", "per_class"), [("train", 80), ("val", 20), ("test", 100)])
def test_split_sizes_and_balance(split: str, per_class: int) -> None:
    ds = load_embedded(split)
    assert len(ds) == 10 * per_class
    assert np.bincount(ds.labels, minlength=10).tolist() == [per_class] * 10
    assert ds.labels.dtype == np.int64
    assert ds.name == f"fashion-mnist/{split}"


def test_classnames_follow_fashion_mnist_label_order() -> None:
    # official order: T-shirt/top, Trouser, Pullover, Dress, Coat, Sandal, Shirt, Sneaker, Bag,
    # Ankle boot
    assert load_embedded("test").classnames == [
        "t-shirt", "trousers", "sweater", "dress", "coat",
        "sandal", "shirt", "sneaker", "handbag", "ankle boot",
    ]  # fmt: skip


def test_train_is_first_80_per_class_and_val_the_rest() -> None:
    raw = _raw()
    labels = raw["train_labels"]
    train, val = load_embedded("train", invert=False), load_embedded("val", invert=False)
    for c in range(10):
        rows = np.flatnonzero(labels == c)
        assert np.array_equal(train.images[train.labels == c], raw["train_images"][rows[:80]])
        assert np.array_equal(val.images[val.labels == c], raw["train_images"][rows[80:]])


def test_images_are_rgb_28px_and_inverted_by_default() -> None:
    raw = _raw()
    img = load_embedded("test").load_image(3)
    assert img.mode == "RGB" and img.size == (28, 28)
    arr = np.asarray(img)
    assert np.array_equal(arr[..., 0], 255 - raw["test_images"][3])
    assert np.array_equal(arr[..., 0], arr[..., 2])
    plain = np.asarray(load_embedded("test", invert=False).load_image(3))[..., 1]
    assert np.array_equal(plain, raw["test_images"][3])
    # dark-on-light: the border (background) is bright after inversion
    assert arr[0, :, 0].mean() > 200


def test_archive_is_small_balanced_and_licensed() -> None:
    assert ARCHIVE.stat().st_size < 1.5e6
    raw = _raw()
    for split in ("train", "test"):
        assert raw[f"{split}_images"].shape == (1000, 28, 28)
        assert raw[f"{split}_images"].dtype == np.uint8
        assert len(np.unique(raw[f"{split}_source_index"])) == 1000
    text = LICENSE.read_text()
    assert "Zalando SE" in text and "Permission is hereby granted" in text


@pytest.mark.skipif(not IDX_DIR.is_dir(), reason="Debian dataset-fashion-mnist not installed")
def test_subset_pixels_come_from_the_official_files() -> None:
    raw = _raw()
    for split, prefix in (("train", "train"), ("test", "t10k")):
        with gzip.open(IDX_DIR / f"{prefix}-images-idx3-ubyte.gz") as fh:
            official = np.frombuffer(fh.read(), np.uint8, offset=16).reshape(-1, 28, 28)
        with gzip.open(IDX_DIR / f"{prefix}-labels-idx1-ubyte.gz") as fh:
            official_labels = np.frombuffer(fh.read(), np.uint8, offset=8)
        src = raw[f"{split}_source_index"]
        assert np.array_equal(raw[f"{split}_images"], official[src])
        assert np.array_equal(raw[f"{split}_labels"], official_labels[src])


def test_fingerprint_changes_with_one_pixel_and_with_invert() -> None:
    ds = load_embedded("val")
    images = ds.images.copy()
    same = ArrayImages(images, ds.labels, ds.classnames, "copy", tag=ds.tag)
    assert same.fingerprint() == ds.fingerprint()
    images[7, 13, 13] ^= 1
    changed = ArrayImages(images, ds.labels, ds.classnames, "copy", tag=ds.tag)
    assert changed.fingerprint() != ds.fingerprint()
    assert load_embedded("val", invert=False).fingerprint() != ds.fingerprint()
    assert load_embedded("val").fingerprint() == ds.fingerprint()


def test_bad_split_and_registry() -> None:
    with pytest.raises(DataError, match="unknown split"):
        load_embedded("validation")
    ds = load_dataset("fashion-mnist", "val", invert=False)
    assert ds.fingerprint() == load_embedded("val", invert=False).fingerprint()
    with pytest.raises(DataError, match="does not take"):
        load_dataset("fashion-mnist", "val", severity=3)
