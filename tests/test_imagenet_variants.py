"""ImageNet-V2/-Sketch/-A/-R loaders on tiny fake trees in CoOp's layout (labels by hand)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image

from pyro_clip.data import known_datasets, load_dataset
from pyro_clip.data.imagenet_variants import (
    IMAGENET_VARIANTS,
    ImageNetVariantImages,
    validate_variant_layout,
)
from pyro_clip.errors import DataError

# five fake classes, written out of order: labels follow the *sorted* wnids
CLASSES = {"n03": "golden retriever", "n01": "tench", "n05": "zebra", "n02": "goldfish",
           "n04": "toucan"}
SORTED = ["n01", "n02", "n03", "n04", "n05"]


def _img(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((4, 4, 3), value, np.uint8)).save(path)


@pytest.fixture
def root(tmp_path, monkeypatch):
    (tmp_path / "imagenet").mkdir()
    (tmp_path / "imagenet/classnames.txt").write_text(
        "".join(f"{w} {n}\n" for w, n in CLASSES.items()))
    # V2: folders by class index; class 1 (n02 goldfish) has two images
    v2 = tmp_path / "imagenetv2/imagenetv2-matched-frequency-format-val"
    for k in range(5):
        _img(v2 / str(k) / "a.jpeg", k)
    _img(v2 / "1" / "b.jpeg", 99)
    # Sketch: folders by wnid
    for w in SORTED:
        _img(tmp_path / "imagenet-sketch/images" / w / "s.JPEG", 1)
    # A and R: a subset of classes (n02, n05 here; 200 in the real sets)
    for sub in ("imagenet-adversarial/imagenet-a", "imagenet-rendition/imagenet-r"):
        for w in ("n05", "n02"):
            _img(tmp_path / sub / w / "x.jpg", 2)
        (tmp_path / sub / "README.txt").write_text("not a class")
    sizes = {"imagenet-v2": 5, "imagenet-sketch": 5, "imagenet-a": 2, "imagenet-r": 2}
    for name, n in sizes.items():
        # the real sets have 1000 / 200 classes; the fake tree has 5 / 2
        monkeypatch.setitem(IMAGENET_VARIANTS, name,
                            dataclasses.replace(IMAGENET_VARIANTS[name], num_classes=n))
    return tmp_path


def test_registered_names():
    assert {"imagenet-v2", "imagenet-sketch", "imagenet-a", "imagenet-r"} <= set(known_datasets())


def test_v2_labels_follow_class_index_folders(root):
    ds = load_dataset("imagenet-v2", "test", root=root)
    assert ds.classnames == ["tench", "goldfish", "golden retriever", "toucan", "zebra"]
    assert ds.labels.tolist() == [0, 1, 1, 2, 3, 4]
    assert [p.name for p in ds.paths[1:3]] == ["a.jpeg", "b.jpeg"]
    assert np.asarray(ds.load_image(2))[0, 0, 0] == 99  # folder 1, second image
    assert len(ds.fingerprint()) == 64


def test_sketch_labels_follow_sorted_wnids(root):
    ds = load_dataset("ImageNetSketch", "test", root=root)
    assert ds.labels.tolist() == [0, 1, 2, 3, 4]
    assert ds.classnames[2] == "golden retriever"


@pytest.mark.parametrize("name", ["imagenet-a", "imagenet-r"])
def test_a_and_r_use_their_class_subset(root, name):
    ds = load_dataset(name, "test", root=root)
    assert ds.classnames == ["goldfish", "zebra"]  # sorted wnid order n02, n05
    assert ds.labels.tolist() == [0, 1] and ds.num_classes == 2


def test_evaluation_only_and_errors(root, tmp_path):
    with pytest.raises(DataError, match="evaluation-only"):
        load_dataset("imagenet-a", "train", root=root)
    with pytest.raises(DataError, match="pass root"):
        load_dataset("imagenet-r", "test")
    (root / "imagenet-sketch/images/n99").mkdir()
    with pytest.raises(DataError, match="not wnids"):
        ImageNetVariantImages(root, "imagenet-sketch")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"classnames\.txt"):
        ImageNetVariantImages(empty, "imagenet-v2")


def test_validate_layout_reports_problems(root, tmp_path):
    assert validate_variant_layout(root, "imagenet-v2") == []
    assert validate_variant_layout(tmp_path / "nowhere", "imagenet-a") == [
        f"data root {tmp_path / 'nowhere'} does not exist"]
    (tmp_path / "bare").mkdir()
    problems = validate_variant_layout(tmp_path / "bare", "imagenet-r")
    assert len(problems) == 2 and "classnames.txt" in problems[0]
    assert "imagenet-rendition/imagenet-r" in problems[1]
    # a missing class folder is a problem, not an exception
    for f in (root / "imagenetv2/imagenetv2-matched-frequency-format-val/4").iterdir():
        f.unlink()
    (root / "imagenetv2/imagenetv2-matched-frequency-format-val/4").rmdir()
    (problem,) = validate_variant_layout(root, "imagenet-v2")
    assert "holds 4 class folders" in problem
