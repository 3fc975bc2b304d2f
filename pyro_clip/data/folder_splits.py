"""The train / val / test splits of a folder data set (``--dataset folder``), without leaks.

Layouts read under ``root`` (first match wins):

* a split file (``split_file=``, the JSON a run writes as ``split.json``): the listed files;
* ``root/train/<class>/...`` + ``root/test/<class>/...`` (+ optional ``root/val/<class>/...``):
  the folders as given; without ``val/``, validation is carved from ``train`` per class
  (seeded, a ``VAL_SHARE`` of each class), never from ``test``;
* ``root/<class>/<images>`` (flat): a seeded, per-class (stratified) split into
  ``FLAT_SHARES`` train / val and the rest test, the shares of CoOp's own splits of
  class-per-folder sets (``read_and_split_data``: 50 / 20 / 30 %).

Byte-identical files are kept together in one split when this module splits them; files that
still appear in two splits (as given, or the same image in two classes) are counted in a
warning. A class of ``val/`` or ``test/`` that ``train/`` lacks is an error naming it (no model
can score it); classes missing from ``test/`` are scored over all of train's classes.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pyro_clip.data._hashing import content_groups
from pyro_clip.data.dassl_splits import read_zhou_split
from pyro_clip.data.folders import FileListImages, ImageFolderImages
from pyro_clip.errors import DataError

SPLITS = ("train", "val", "test")
#: shares of each class for train and val in a flat folder; test gets the rest
FLAT_SHARES = (0.5, 0.2)
#: share of each training class carved out for validation when ``val/`` is absent
VAL_SHARE = 0.2
#: seed of the split of a flat folder (fixed, so that every run seed shares one test set)
DEFAULT_SPLIT_SEED = 1

Items = list[tuple[str, int]]


@dataclass
class FolderSplits:
    """A folder data set's three splits: ``items[split]`` = (path relative to root, label)."""

    root: Path
    #: ``"flat"``, ``"train/test"``, ``"train/val/test"`` or ``"split file"``
    layout: str
    classnames: list[str]
    items: dict[str, Items]
    #: the seed of a split made here (``None`` when every split was given)
    seed: int | None = None
    split_file: Path | None = None
    #: corrupt files left out (``skip_corrupt``), per split ("train" for a flat folder's)
    skipped: dict[str, list[Path]] = field(default_factory=dict)
    #: content groups (relative paths) found in more than one split
    shared: list[list[str]] = field(default_factory=list)

    def images(self, split: str) -> FileListImages:
        """One split as a labelled image set (paths under ``root``)."""
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r}; choose one of {list(SPLITS)}")
        rel = [r for r, _ in self.items[split]]
        images = FileListImages(self.root, rel, [y for _, y in self.items[split]],
                                self.classnames, f"{self.root.name}/{split}")
        images.skipped = list(self.skipped.get(split, []))
        return images

    def record(self) -> dict[str, Any]:
        """The split as a split file (``{"train": [[relpath, label, classname], ...], ...}``,
        the CoOp/Dassl format) that ``split_file=`` reads back."""
        out: dict[str, Any] = {
            split: [[rel, y, self.classnames[y]] for rel, y in self.items[split]]
            for split in SPLITS
        }
        out["pyro_clip"] = {"root": str(self.root), "layout": self.layout, "seed": self.seed}
        return out

    def summary(self) -> str:
        """One line: the layout, how it was split and the split sizes."""
        how = {
            "flat": f"flat class folders, split per class by seed {self.seed} "
                    f"({FLAT_SHARES[0]:.0%} train, {FLAT_SHARES[1]:.0%} val, rest test)",
            "train/test": f"train/ and test/ as given, val carved from train per class by seed "
                          f"{self.seed} ({VAL_SHARE:.0%})",
            "train/val/test": "train/, val/ and test/ as given",
            "split file": f"split file {self.split_file}",
        }[self.layout]
        sizes = " / ".join(f"{split} {len(self.items[split])}" for split in SPLITS)
        return (f"folder data set {self.root}: {how}; {len(self.classnames)} classes, "
                f"{sizes} images")


def _has_class_folders(path: Path) -> bool:
    return path.is_dir() and any(p.is_dir() and not p.name.startswith(".")
                                 for p in path.iterdir())


def detect_layout(root: Path) -> str:
    """``"train/val/test"``, ``"train/test"`` or ``"flat"`` (see the module docstring).

    ``train/`` and ``test/`` count as split folders only when both hold class folders, so a
    flat set with a class named ``train`` (CIFAR-100) stays flat; one without the other is
    an error, since neither reading is safe."""
    train, test = _has_class_folders(root / "train"), _has_class_folders(root / "test")
    if train and test:
        return "train/val/test" if _has_class_folders(root / "val") else "train/test"
    if train or test:
        have, lack = ("train", "test") if train else ("test", "train")
        raise DataError(
            f"{root}/{have}/ holds class folders but {root}/{lack}/ does not; add "
            f"{root}/{lack}/<class>/<images>, or put the class folders directly under {root} "
            "for a seeded train/val/test split"
        )
    return "flat"


def _units(labels: np.ndarray, paths: Sequence[Path]) -> list[list[int]]:
    """Indices grouped so that byte-identical files of one class form one unit."""
    unit_of = {i: i for i in range(len(paths))}
    for group in content_groups(paths):
        for label in {int(labels[i]) for i in group}:
            same = [i for i in group if labels[i] == label]
            for i in same:
                unit_of[i] = same[0]
    units: dict[int, list[int]] = {}
    for i in range(len(paths)):
        units.setdefault(unit_of[i], []).append(i)
    return list(units.values())


def stratified_split(
    labels: np.ndarray,
    units: list[list[int]],
    shares: Sequence[float],
    seed: int,
    classnames: Sequence[str],
    fix: str,
) -> list[list[int]]:
    """Per class, shuffle its units (seeded, classes in label order) and deal them out in
    order: split ``k`` takes units until it holds ``round(shares[k] * n_class)`` images (at
    least one unit), the last split takes the rest. Every split gets >= 1 unit of every class;
    a class with fewer units than splits is an error naming it (``fix`` says what to do)."""
    n_splits = len(shares) + 1
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[list[int]]] = {}
    for unit in units:
        by_class.setdefault(int(labels[unit[0]]), []).append(unit)
    short = [classnames[c] for c in sorted(by_class) if len(by_class[c]) < n_splits]
    if short:
        raise DataError(
            f"class(es) {short} have fewer than {n_splits} distinct images; a seeded split "
            f"needs at least {n_splits} per class ({fix})"
        )
    out: list[list[int]] = [[] for _ in range(n_splits)]
    for c in sorted(by_class):
        class_units = by_class[c]
        n = sum(len(u) for u in class_units)
        targets = [max(1, int(share * n + 0.5)) for share in shares]
        counts = [0] * n_splits
        order = rng.permutation(len(class_units))
        s = 0
        for j, u in enumerate(order):
            splits_left_empty = n_splits - 1 - s
            if s < n_splits - 1 and counts[s] > 0 and (
                counts[s] >= targets[s] or len(order) - j <= splits_left_empty
            ):
                s += 1
            out[s].extend(class_units[u])
            counts[s] += len(class_units[u])
    return [sorted(split) for split in out]


def _listed(folder: ImageFolderImages, root: Path) -> tuple[list[str], list[Path]]:
    return [p.relative_to(root).as_posix() for p in folder.paths], list(folder.paths)


def _split_flat(root: Path, seed: int, skip_corrupt: bool) -> FolderSplits:
    whole = ImageFolderImages(root, skip_corrupt=skip_corrupt)
    rel, paths = _listed(whole, root)
    labels = whole.labels
    parts = stratified_split(
        labels, _units(labels, paths), FLAT_SHARES, seed, whole.classnames,
        "add images, or give train/ and test/ folders",
    )
    items = {split: [(rel[i], int(labels[i])) for i in idx] for split, idx in zip(SPLITS, parts,
                                                                                 strict=True)}
    return FolderSplits(root, "flat", whole.classnames, items, seed=seed,
                        skipped={"train": list(whole.skipped)})


def _class_mismatch(root: Path, split: str, train: list[str], other: list[str]) -> None:
    extra = sorted(set(other) - set(train))
    if extra:
        raise DataError(
            f"{root}/{split}/ has class folder(s) {extra} that {root}/train/ lacks; a model "
            f"cannot score classes it was not fitted to: add them to train/ or remove them "
            f"from {split}/"
        )
    if split == "val":
        lacking = sorted(set(train) - set(other))
        if lacking:
            raise DataError(
                f"{root}/val/ lacks class folder(s) {lacking} of {root}/train/; add them, or "
                "remove val/ to carve validation from train/ per class"
            )


def _read_split_folders(root: Path, layout: str, seed: int, skip_corrupt: bool) -> FolderSplits:
    given = [s for s in SPLITS if s != "val" or layout == "train/val/test"]
    ignored = sorted(p.name for p in root.iterdir()
                     if p.is_dir() and not p.name.startswith(".") and p.name not in SPLITS)
    if ignored:
        warnings.warn(f"{root}: folder(s) {ignored} beside train/ and test/ are not read; "
                      "move their images into the split folders", stacklevel=3)
    folders = {s: ImageFolderImages(root / s, split_name=s, skip_corrupt=skip_corrupt)
               for s in given}
    train_dirs = folders["train"].class_dirs
    label_of = {d: k for k, d in enumerate(train_dirs)}
    items: dict[str, Items] = {}
    for split, folder in folders.items():
        _class_mismatch(root, split, train_dirs, folder.class_dirs)
        rel, _ = _listed(folder, root)
        labels = [label_of[folder.class_dirs[y]] for y in folder.labels]
        items[split] = list(zip(rel, labels, strict=True))
    classnames = folders["train"].classnames
    skipped = {s: list(f.skipped) for s, f in folders.items()}
    if layout == "train/val/test":
        return FolderSplits(root, layout, classnames, items, skipped=skipped)
    train = folders["train"]
    labels = train.labels
    keep, val = stratified_split(
        labels, _units(labels, train.paths), (1 - VAL_SHARE,), seed, classnames,
        "add training images, or give a val/ folder",
    )
    rel = [r for r, _ in items["train"]]
    items["train"] = [(rel[i], int(labels[i])) for i in keep]
    items["val"] = [(rel[i], int(labels[i])) for i in val]
    return FolderSplits(root, layout, classnames, items, seed=seed, skipped=skipped)


def _read_split_file(root: Path, split_file: Path, skip_corrupt: bool) -> FolderSplits:
    if not split_file.is_file():
        raise DataError(f"split file {split_file} not found; pass the split.json a run wrote")
    items: dict[str, Items] = {}
    classnames: list[str] = []
    for split in SPLITS:
        items[split], classnames = read_zhou_split(split_file, split)
        missing = [rel for rel, _ in items[split] if not (root / rel).is_file()]
        if missing:
            raise DataError(
                f"image {root / missing[0]} listed in {split_file} ({split}) is missing "
                f"({len(missing)} of {len(items[split])} missing); check the data root {root}"
            )
        if not items[split]:
            raise DataError(f"split file {split_file} lists no {split!r} images")
    splits = FolderSplits(root, "split file", classnames, items, split_file=split_file)
    if skip_corrupt:
        for split in SPLITS:
            images = splits.images(split)
            images.drop_corrupt()
            splits.skipped[split] = list(images.skipped)
            bad = {p.relative_to(root).as_posix() for p in images.skipped}
            splits.items[split] = [(r, y) for r, y in items[split] if r not in bad]
    return splits


def shared_content(splits: FolderSplits) -> list[list[str]]:
    """Groups of byte-identical files (relative paths) that lie in more than one split."""
    rel: list[str] = []
    split_of: list[str] = []
    for split in SPLITS:
        for r, _ in splits.items[split]:
            rel.append(r)
            split_of.append(split)
    groups = content_groups([splits.root / r for r in rel])
    return [[rel[i] for i in g] for g in groups if len({split_of[i] for i in g}) > 1]


def read_folder_splits(
    root: str | Path,
    seed: int = DEFAULT_SPLIT_SEED,
    split_file: str | Path | None = None,
    skip_corrupt: bool = False,
) -> FolderSplits:
    """Read ``root``'s layout (module docstring) into disjoint train / val / test splits.

    Warns with their count when byte-identical files lie in two splits.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(
            f"image folder {root} does not exist; pass the folder that holds <class>/<images> "
            "(or train/ and test/ folders of them)"
        )
    if split_file is not None:
        splits = _read_split_file(root, Path(split_file).expanduser(), skip_corrupt)
    else:
        layout = detect_layout(root)
        splits = (_split_flat(root, seed, skip_corrupt) if layout == "flat"
                  else _read_split_folders(root, layout, seed, skip_corrupt))
    splits.shared = shared_content(splits)
    if splits.shared:
        first = " = ".join(splits.shared[0])
        warnings.warn(
            f"folder data set {root}: {len(splits.shared)} image(s) appear byte for byte in "
            f"more than one of train/val/test (first: {first}); scores on them are not on "
            "unseen images: remove the copies",
            stacklevel=2,
        )
    return splits
