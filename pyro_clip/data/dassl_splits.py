"""Readers for the three split descriptions used by the CoOp/Dassl benchmarks.

Each reader returns ``(items, classnames)`` where ``items`` is a list of
``(path relative to the image folder, label)`` and ``classnames[label]`` is a natural name.
Problems raise ``DataError``.
"""

from __future__ import annotations

import json
from pathlib import Path

from pyro_clip.data._decode import is_image_file
from pyro_clip.errors import DataError

Items = list[tuple[str, int]]
ZHOU_SPLITS = ("train", "val", "test")


def read_zhou_split(path: Path, split: str) -> tuple[Items, list[str]]:
    """Parse ``split_zhou_*.json``: ``{"train": [[relpath, label, classname], ...], ...}``.

    Class names are collected over all three splits (so every split shares one label space);
    underscores become spaces.
    """
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read split file {path}: {exc}") from exc
    if not isinstance(data, dict) or split not in data:
        raise DataError(f"split file {path} has no {split!r} list; expected keys {ZHOU_SPLITS}")
    names: dict[int, str] = {}
    parsed: dict[str, Items] = {}
    for key in ZHOU_SPLITS:
        parsed[key] = []
        for row in data.get(key, []):
            if not (
                isinstance(row, list)
                and len(row) == 3
                and isinstance(row[0], str)
                and isinstance(row[1], int)
                and not isinstance(row[1], bool)
                and isinstance(row[2], str)
                and row[1] >= 0
            ):
                raise DataError(
                    f"split file {path}: {key!r} entry {row!r} is not [relpath, label, classname]"
                )
            relpath, label, cname = row
            cname = cname.replace("_", " ")
            if names.setdefault(label, cname) != cname:
                raise DataError(
                    f"split file {path}: label {label} is named both {names[label]!r} and {cname!r}"
                )
            parsed[key].append((relpath, label))
    if not names:
        raise DataError(f"split file {path} lists no images")
    missing = sorted(set(range(max(names) + 1)) - set(names))
    if missing:
        raise DataError(
            f"split file {path}: labels {missing[:10]} never occur; labels must be 0..C-1"
        )
    return parsed[split], [names[k] for k in range(len(names))]


def read_imagenet_classnames(path: Path) -> dict[str, str]:
    """``classnames.txt``: one ``<wnid> <class name>`` per line, returned sorted by wnid."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read ImageNet class names {path}: {exc}") from exc
    names: dict[str, str] = {}
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = line.strip().split(maxsplit=1)
        if len(parts) != 2:
            raise DataError(f"{path} line {n}: expected '<wnid> <class name>', got {line!r}")
        names[parts[0]] = parts[1]
    if not names:
        raise DataError(f"{path} lists no classes")
    return dict(sorted(names.items()))


def read_imagenet_split(
    image_dir: Path, classnames_file: Path, split: str
) -> tuple[Items, list[str]]:
    """ImageNet as in CoOp: ``images/train/<wnid>/*`` is train, ``images/val/<wnid>/*`` is test.

    Labels follow the sorted wnids of ``classnames.txt``. CoOp has no separate validation
    split for ImageNet (it validates on the test images), so ``"val"`` is refused.
    """
    if split == "val":
        raise DataError(
            "ImageNet has no validation split in CoOp (it reuses the test images, which would "
            "select hyper-parameters on test data); hold validation shots out of 'train', e.g. "
            "make_few_shot(train, train, test, shots, seed)"
        )
    wnids = read_imagenet_classnames(classnames_file)
    split_dir = image_dir / ("train" if split == "train" else "val")
    items: Items = []
    for label, wnid in enumerate(wnids):
        class_dir = split_dir / wnid
        if not class_dir.is_dir():
            raise DataError(
                f"ImageNet class folder {class_dir} is missing; images/{split_dir.name} must hold "
                "one folder per wnid (reorganise the flat val/ folder into class folders)"
            )
        files = sorted(p for p in class_dir.iterdir() if is_image_file(p))
        items.extend((p.relative_to(image_dir).as_posix(), label) for p in files)
    return items, list(wnids.values())


def read_fgvc_split(variants_file: Path, split: str) -> tuple[Items, list[str]]:
    """FGVC-Aircraft as in CoOp: ``variants.txt`` names the classes (label = line order);
    ``images_variant_{split}.txt`` lists ``<image id> <variant>``; images are ``<id>.jpg``."""
    try:
        variants = [v.strip() for v in variants_file.read_text().splitlines() if v.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read FGVC-Aircraft variants {variants_file}: {exc}") from exc
    label_of = {v: k for k, v in enumerate(variants)}
    list_file = variants_file.parent / f"images_variant_{split}.txt"
    try:
        lines = list_file.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read FGVC-Aircraft split list {list_file}: {exc}") from exc
    items: Items = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        image_id, _, variant = line.strip().partition(" ")
        if variant not in label_of:
            raise DataError(f"{list_file} line {n}: variant {variant!r} not in {variants_file}")
        items.append((f"{image_id}.jpg", label_of[variant]))
    return items, variants
