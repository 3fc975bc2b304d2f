"""Folder data sets: every layout gives disjoint train / val / test splits (by content too)."""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pyro_clip.data import ArrayImages, load_dataset
from pyro_clip.data.eval_sets import check_split_classes
from pyro_clip.data.folder_splits import SPLITS, read_folder_splits
from pyro_clip.errors import DataError
from pyro_clip.utils.io import write_json


def _write(root: Path, counts: dict[str, int], seed: int = 0, prefix: str = "") -> None:
    """``counts[class]`` distinct random 6 x 6 PNGs under ``root/<prefix><class>/``."""
    rng = np.random.default_rng(seed)
    for cls, n in counts.items():
        folder = root / prefix / cls if prefix else root / cls
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            pixels = rng.integers(0, 255, (6, 6, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{i:03d}.png")


def _digests(images) -> set[str]:
    """sha256 of every file's bytes, computed here (not with the code under test)."""
    return {hashlib.sha256(p.read_bytes()).hexdigest() for p in images.paths}


def _load(root: Path, **kw):
    return {split: load_dataset("folder", split, root=root, **kw) for split in SPLITS}


def _assert_disjoint(splits) -> None:
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not set(splits[a].paths) & set(splits[b].paths), (a, b)
        assert not _digests(splits[a]) & _digests(splits[b]), (a, b)


def test_flat_folder_is_split_per_class_disjoint_and_seeded(tmp_path: Path) -> None:
    _write(tmp_path, {"cat": 20, "dog": 20, "fox": 10})
    splits = _load(tmp_path)
    _assert_disjoint(splits)
    sizes = {s: np.bincount(splits[s].labels, minlength=3).tolist() for s in SPLITS}
    # 50 % / 20 % / rest of each class (20 -> 10/4/6, 10 -> 5/2/3)
    assert sizes == {"train": [10, 10, 5], "val": [4, 4, 2], "test": [6, 6, 3]}
    assert all(splits[s].classnames == ["cat", "dog", "fox"] for s in SPLITS)
    every = sorted(p for s in SPLITS for p in splits[s].paths)
    assert every == sorted(tmp_path.rglob("*.png"))  # nothing lost, nothing twice
    again = _load(tmp_path)
    assert all(again[s].paths == splits[s].paths for s in SPLITS)
    other = _load(tmp_path, split_seed=2)
    assert other["test"].paths != splits["test"].paths
    _assert_disjoint(other)


def test_copies_of_one_image_stay_in_one_split(tmp_path: Path) -> None:
    _write(tmp_path, {"a": 12, "b": 12})
    for i in range(5):  # five byte-identical copies inside class a
        shutil.copy(tmp_path / "a" / "000.png", tmp_path / "a" / f"copy{i}.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no copy straddles two splits: no warning
        splits = _load(tmp_path)
    _assert_disjoint(splits)


def test_flat_class_with_too_few_images_is_named(tmp_path: Path) -> None:
    _write(tmp_path, {"a": 10, "tiny": 2})
    with pytest.raises(DataError, match=r"\['tiny'\] have fewer than 3 distinct images"):
        load_dataset("folder", "train", root=tmp_path)


def test_train_test_layout_carves_val_from_train_only(tmp_path: Path) -> None:
    _write(tmp_path, {"a": 10, "b": 10}, seed=1, prefix="train")
    _write(tmp_path, {"a": 4, "b": 3}, seed=2, prefix="test")
    _write(tmp_path, {"stray": 3}, seed=3)
    with pytest.warns(UserWarning, match=r"\['stray'\] beside train/ and test/ are not read"):
        splits = _load(tmp_path)
    _assert_disjoint(splits)
    assert sorted(splits["test"].paths) == sorted((tmp_path / "test").rglob("*.png"))
    assert np.bincount(splits["val"].labels).tolist() == [2, 2]  # 20 % of each class
    train_files = set((tmp_path / "train").rglob("*.png"))
    assert set(splits["val"].paths) | set(splits["train"].paths) == train_files


def test_train_val_test_layout_is_read_as_given(tmp_path: Path) -> None:
    for seed, (split, n) in enumerate((("train", 5), ("val", 2), ("test", 3))):
        _write(tmp_path, {"a": n, "b": n}, seed=seed, prefix=split)
    splits = _load(tmp_path)
    for split in SPLITS:
        assert sorted(splits[split].paths) == sorted((tmp_path / split).rglob("*.png"))
    _assert_disjoint(splits)


def test_same_file_in_two_given_splits_is_counted_in_a_warning(tmp_path: Path) -> None:
    _write(tmp_path, {"a": 5, "b": 5}, seed=1, prefix="train")
    _write(tmp_path, {"a": 3, "b": 3}, seed=2, prefix="test")
    shutil.copy(tmp_path / "train" / "a" / "001.png", tmp_path / "test" / "a" / "leak1.png")
    shutil.copy(tmp_path / "train" / "b" / "004.png", tmp_path / "test" / "b" / "leak2.png")
    with pytest.warns(UserWarning, match=r"2 image\(s\) appear byte for byte in more than one"):
        read_folder_splits(tmp_path)


def test_classes_that_differ_between_split_folders(tmp_path: Path) -> None:
    _write(tmp_path, {"a": 5, "b": 5}, prefix="train")
    _write(tmp_path, {"a": 2, "b": 2, "zebra": 2}, seed=1, prefix="test")
    with pytest.raises(DataError, match=r"test/ has class folder\(s\) \['zebra'\] that"):
        read_folder_splits(tmp_path)
    shutil.rmtree(tmp_path / "test" / "zebra")
    _write(tmp_path, {"a": 2}, seed=2, prefix="val")
    with pytest.raises(DataError, match=r"val/ lacks class folder\(s\) \['b'\]"):
        read_folder_splits(tmp_path)


def test_class_missing_from_test_keeps_the_training_label_space(tmp_path: Path) -> None:
    _write(tmp_path, {"a": 5, "b": 5, "c": 5}, prefix="train")
    _write(tmp_path, {"a": 2, "c": 2}, seed=1, prefix="test")
    splits = _load(tmp_path)
    test = splits["test"]
    assert test.classnames == ["a", "b", "c"]  # scored 3-way, not 2-way
    assert sorted(set(test.labels.tolist())) == [0, 2]
    with pytest.warns(UserWarning, match=r"no images of class\(es\) \['b'\].*all 3 classes"):
        check_split_classes(splits["train"], test, "few-shot")


def test_half_a_layout_is_an_error_and_a_class_named_train_is_flat(tmp_path: Path) -> None:
    _write(tmp_path / "x", {"a": 3}, prefix="train")
    with pytest.raises(DataError, match=r"train/ holds class folders but .*test/ does not"):
        read_folder_splits(tmp_path / "x")
    _write(tmp_path / "cifar", {"train": 3, "tractor": 3})  # CIFAR-100 has a class "train"
    assert read_folder_splits(tmp_path / "cifar").layout == "flat"


def test_split_file_round_trip(tmp_path: Path) -> None:
    root = tmp_path / "data"
    _write(root, {"a": 10, "b_c": 10})
    made = read_folder_splits(root, seed=3)
    write_json(tmp_path / "split.json", made.record())
    data = json.loads((tmp_path / "split.json").read_text())
    assert data["pyro_clip"]["layout"] == "flat" and data["pyro_clip"]["seed"] == 3
    reread = _load(root, split_file=tmp_path / "split.json")
    for split in SPLITS:
        assert reread[split].paths == made.images(split).paths
        assert reread[split].labels.tolist() == made.images(split).labels.tolist()
        assert reread[split].classnames == ["a", "b c"]
    (root / made.items["test"][0][0]).unlink()
    with pytest.raises(DataError, match=r"listed in .*split.json \(test\) is missing"):
        load_dataset("folder", "test", root=root, split_file=tmp_path / "split.json")


def test_one_class_and_tiny_base_to_new_are_refused() -> None:
    pixels = np.zeros((6, 4, 4), dtype=np.uint8)
    one = ArrayImages(pixels, np.zeros(6, dtype=np.int64), ["only"], name="one")
    with pytest.raises(DataError, match=r"1 class \(\['only'\]\); classification needs at least"):
        check_split_classes(one, one, "few-shot")
    three = ArrayImages(pixels, np.arange(6) % 3, ["a", "b", "c"], name="three")
    with pytest.raises(DataError, match="at least 4 classes"):
        check_split_classes(three, three, "base-to-new")


def test_content_groups_match_brute_force(tmp_path: Path) -> None:
    from pyro_clip.data._hashing import content_groups

    rng = np.random.default_rng(5)
    blobs = [rng.bytes(8) for _ in range(4)] + [rng.bytes(9)]  # four share a size
    picks = rng.integers(0, len(blobs), 30)
    paths = []
    for i, k in enumerate(picks):
        paths.append(tmp_path / f"{i}.bin")
        paths[-1].write_bytes(blobs[k])
    by_bytes: dict[bytes, list[int]] = {}
    for i, path in enumerate(paths):
        by_bytes.setdefault(path.read_bytes(), []).append(i)
    expected = sorted(g for g in by_bytes.values() if len(g) > 1)
    assert content_groups(paths) == expected
