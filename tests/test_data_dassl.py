"""CoOp/Dassl split files on a tiny synthetic benchmark with generated images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pyro_clip.data import DasslSplitImages, known_datasets, load_dataset, validate_dassl_layout
from pyro_clip.errors import DataError

SPLIT = {
    "train": [
        ["accordion/image_0001.jpg", 0, "accordion"],
        ["accordion/image_0002.jpg", 0, "accordion"],
        ["grand_piano/image_0001.jpg", 2, "grand_piano"],
    ],
    "val": [["cougar_face/image_0001.jpg", 1, "cougar_face"]],
    "test": [
        ["cougar_face/image_0002.jpg", 1, "cougar_face"],
        ["grand_piano/image_0002.jpg", 2, "grand_piano"],
    ],
}


def _write_image(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((5, 7, 3), value, dtype=np.uint8)).save(path, quality=95)


@pytest.fixture
def caltech(tmp_path: Path) -> Path:
    image_dir = tmp_path / "caltech-101" / "101_ObjectCategories"
    for k, (rel, _, _) in enumerate(row for rows in SPLIT.values() for row in rows):
        _write_image(image_dir / rel, 40 * k)
    (tmp_path / "caltech-101" / "split_zhou_Caltech101.json").write_text(json.dumps(SPLIT))
    return tmp_path


def test_split_parsing(caltech: Path) -> None:
    train = DasslSplitImages(caltech, "caltech-101", "train")
    assert train.classnames == ["accordion", "cougar face", "grand piano"]
    assert train.labels.tolist() == [0, 0, 2]
    assert train.name == "caltech-101/train"
    assert train.load_image(2).mode == "RGB" and train.load_image(2).size == (7, 5)
    test = DasslSplitImages(caltech, "Caltech101", "test")  # CoOp's class name works too
    assert test.labels.tolist() == [1, 2] and test.classnames == train.classnames
    assert len(DasslSplitImages(caltech, "caltech-101", "val")) == 1
    assert len(load_dataset("caltech101", "train", root=caltech)) == 3


def test_fingerprint_follows_content(caltech: Path, monkeypatch) -> None:
    # content keys (opt-in): a same-size rewrite within the file system's mtime resolution
    # is invisible to the default path/size/mtime key (tests/test_data_folders.py)
    monkeypatch.setenv("PYRO_CLIP_HASH", "content")
    before = DasslSplitImages(caltech, "caltech-101", "train").fingerprint()
    _write_image(caltech / "caltech-101/101_ObjectCategories/accordion/image_0002.jpg", 3)
    assert DasslSplitImages(caltech, "caltech-101", "train").fingerprint() != before


def test_missing_split_file_says_where(tmp_path: Path) -> None:
    (tmp_path / "oxford_pets" / "images").mkdir(parents=True)
    expected = tmp_path / "oxford_pets" / "split_zhou_OxfordPets.json"
    with pytest.raises(DataError) as err:
        DasslSplitImages(tmp_path, "oxford_pets", "train")
    assert str(expected) in str(err.value) and "CoOp" in str(err.value)


def test_missing_image_is_named(caltech: Path) -> None:
    (caltech / "caltech-101/101_ObjectCategories/grand_piano/image_0002.jpg").unlink()
    with pytest.raises(DataError, match=r"grand_piano/image_0002\.jpg.*missing"):
        DasslSplitImages(caltech, "caltech-101", "test")


def test_unknown_dataset_lists_known(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="oxford_flowers"):
        DasslSplitImages(tmp_path, "cifar10", "train")
    with pytest.raises(DataError, match=r"known: \['fashion-mnist'"):
        load_dataset("cifar10", "train", root=tmp_path)
    assert len(known_datasets()) == 3 + 11 + 4  # + ImageNet-V2/-Sketch/-A/-R


def test_malformed_split_file(caltech: Path) -> None:
    path = caltech / "caltech-101" / "split_zhou_Caltech101.json"
    path.write_text(json.dumps({"train": [["a.jpg", "zero", "a"]], "val": [], "test": []}))
    with pytest.raises(DataError, match="not \\[relpath, label, classname\\]"):
        DasslSplitImages(caltech, "caltech-101", "train")


def test_validate_layout_dry_run(tmp_path: Path, caltech: Path) -> None:
    assert validate_dassl_layout(caltech, "caltech-101") == []
    problems = validate_dassl_layout(tmp_path / "empty", "dtd")
    assert problems == [f"data root {tmp_path / 'empty'} does not exist"]
    # split file present, no images yet: every missing path is reported, nothing raised
    (caltech / "caltech-101" / "101_ObjectCategories" / "accordion" / "image_0001.jpg").unlink()
    problems = validate_dassl_layout(caltech, "caltech-101")
    assert problems == [
        f"missing image {caltech}/caltech-101/101_ObjectCategories/accordion/image_0001.jpg"
    ]
    nothing = tmp_path / "nothing"
    nothing.mkdir()
    problems = validate_dassl_layout(nothing, "eurosat")
    assert len(problems) == 2
    assert "eurosat/2750" in problems[0] and "split_zhou_EuroSAT.json" in problems[1]


def test_validate_layout_caps_the_listing(caltech: Path) -> None:
    folder = caltech / "caltech-101" / "101_ObjectCategories"
    for path in folder.rglob("*.jpg"):
        path.unlink()
    problems = validate_dassl_layout(caltech, "caltech-101", max_listed=2)
    assert len(problems) == 3 and problems[-1] == "... and 4 more missing images"


def test_imagenet_folders_and_classnames(tmp_path: Path) -> None:
    base = tmp_path / "imagenet"
    base.mkdir()
    (base / "classnames.txt").write_text("n02\tgoldfish\nn01 tench\n")
    for split in ("train", "val"):
        for wnid, value in (("n01", 10), ("n02", 20)):
            _write_image(base / "images" / split / wnid / f"{wnid}_{split}.JPEG", value)
    train = load_dataset("imagenet", "train", root=tmp_path)
    assert train.classnames == ["tench", "goldfish"] and train.labels.tolist() == [0, 1]
    test = load_dataset("imagenet", "test", root=tmp_path)
    assert [p.parent.parent.name for p in test.paths] == ["val", "val"]
    with pytest.raises(DataError, match="no validation split"):
        load_dataset("imagenet", "val", root=tmp_path)
    assert validate_dassl_layout(tmp_path, "imagenet") == []


def test_fgvc_aircraft_variant_lists(tmp_path: Path) -> None:
    base = tmp_path / "fgvc_aircraft"
    (base / "images").mkdir(parents=True)
    (base / "variants.txt").write_text("707-320\nA300B4\n")
    for split, rows in {
        "train": ["1 A300B4", "2 707-320"],
        "val": ["3 A300B4"],
        "test": [],
    }.items():
        (base / f"images_variant_{split}.txt").write_text("\n".join(rows) + "\n")
        for row in rows:
            _write_image(base / "images" / f"{row.split()[0]}.jpg", 9)
    train = load_dataset("fgvc_aircraft", "train", root=tmp_path)
    assert train.classnames == ["707-320", "A300B4"] and train.labels.tolist() == [1, 0]
    with pytest.raises(DataError, match="lists no 'test' images"):
        load_dataset("fgvc_aircraft", "test", root=tmp_path)
