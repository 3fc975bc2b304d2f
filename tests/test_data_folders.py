"""Class-per-folder image sets: layout, labels, errors and content fingerprints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pyro_clip.data import ImageFolderImages, load_dataset
from pyro_clip.errors import DataError


def _png(path: Path, value: int, size: int = 6) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size), value, dtype=np.uint8)).save(path)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "pets"
    _png(root / "tabby_cat" / "b.png", 10)
    _png(root / "tabby_cat" / "a.png", 20)
    _png(root / "dog" / "x.png", 30)
    (root / "dog" / "notes.txt").write_text("not an image")
    (root / "dog" / ".hidden.png").write_bytes(b"")
    (root / "README.md").write_text("ignored: not a folder")
    return root


def test_layout_labels_and_names(tree: Path) -> None:
    ds = ImageFolderImages(tree, split_name="train")
    assert ds.classnames == ["dog", "tabby cat"]
    assert ds.relpaths() == ["dog/x.png", "tabby_cat/a.png", "tabby_cat/b.png"]
    assert ds.labels.tolist() == [0, 1, 1]
    assert ds.name == "pets/train"
    img = ds.load_image(1)
    assert img.mode == "RGB" and np.asarray(img)[0, 0].tolist() == [20, 20, 20]


def test_keys_follow_path_size_and_mtime_without_reading_bytes(tree: Path, monkeypatch) -> None:
    before = ImageFolderImages(tree)
    again = ImageFolderImages(tree)
    assert again.fingerprint() == before.fingerprint()
    assert again.item_keys() == before.item_keys()
    _png(tree / "dog" / "x.png", 30, size=7)  # rewritten: new size (and mtime)
    changed = ImageFolderImages(tree)
    assert changed.fingerprint() != before.fingerprint()
    assert changed.item_keys()[0] != before.item_keys()[0]
    assert changed.item_keys()[1:] == before.item_keys()[1:]

    def no_reads(*args, **kwargs):
        raise AssertionError("the default key must not read image bytes")

    monkeypatch.setattr("pyro_clip.data._hashing.file_digest", no_reads)
    assert ImageFolderImages(tree).item_keys() == changed.item_keys()


def test_content_keys_are_opt_in(tree: Path, monkeypatch) -> None:
    monkeypatch.setenv("PYRO_CLIP_HASH", "content")
    before = ImageFolderImages(tree)
    (tree / "dog" / "x.png").touch()  # new mtime, same bytes: same content key
    assert ImageFolderImages(tree).item_keys() == before.item_keys()
    assert ImageFolderImages(tree).fingerprint() == before.fingerprint()
    pixels = np.full((6, 6), 30, dtype=np.uint8)
    pixels[2, 3] = 31
    Image.fromarray(pixels).save(tree / "dog" / "x.png")
    assert ImageFolderImages(tree).fingerprint() != before.fingerprint()
    monkeypatch.setenv("PYRO_CLIP_HASH", "sha1")
    with pytest.raises(DataError, match=r"PYRO_CLIP_HASH='sha1'.*stat.*content"):
        ImageFolderImages(tree).item_keys()


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist; pass the folder that contains one"):
        ImageFolderImages(tmp_path / "nope")


def test_no_class_folders(tmp_path: Path) -> None:
    _png(tmp_path / "loose.png", 1)
    with pytest.raises(DataError, match="no class folders"):
        ImageFolderImages(tmp_path)


def test_empty_class_folder_is_named(tree: Path) -> None:
    (tree / "zebra").mkdir()
    with pytest.raises(DataError, match=r"zebra.*remove the folder or add images"):
        ImageFolderImages(tree)


def test_corrupt_image_is_fatal_when_decoded(tree: Path) -> None:
    (tree / "dog" / "broken.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    ds = ImageFolderImages(tree)
    assert len(ds) == 4
    index = ds.relpaths().index("dog/broken.jpg")
    with pytest.raises(DataError, match=r"broken\.jpg.*skip_corrupt=True"):
        ds.load_image(index)


def test_corrupt_image_skipped_with_warning(tree: Path) -> None:
    bad = tree / "dog" / "broken.jpg"
    bad.write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="skipped 1 corrupt"):
        ds = ImageFolderImages(tree, skip_corrupt=True)
    assert ds.skipped == [bad]
    assert len(ds) == 3 and ds.labels.tolist() == [0, 1, 1]


def test_class_of_only_corrupt_images_is_an_error(tmp_path: Path) -> None:
    _png(tmp_path / "a" / "ok.png", 1)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "bad.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"b contains no readable.*1 corrupt file\(s\) skipped"):
        ImageFolderImages(tmp_path, skip_corrupt=True)


def test_registry_reads_split_subfolders(tmp_path: Path) -> None:
    for split, n in (("train", 3), ("test", 2)):
        for c, cls in enumerate("ab"):
            for i in range(n):
                _png(tmp_path / split / cls / f"{i}.png", 40 * c + 10 * i + (split == "test"))
    assert len(load_dataset("folder", "test", root=tmp_path)) == 4
    # no val/: one image per class carved from train, never from test
    assert len(load_dataset("folder", "train", root=tmp_path)) == 4
    val = load_dataset("folder", "val", root=tmp_path)
    assert len(val) == 2 and all(r.startswith("train/") for r in val.relpaths())
    with pytest.raises(DataError, match="root"):
        load_dataset("folder", "train")
