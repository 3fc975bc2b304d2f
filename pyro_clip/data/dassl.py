"""CoOp/Dassl benchmark splits over images the user has downloaded.

Expected layout under ``root`` (CoOp's ``DATASETS.md``; see
:data:`~pyro_clip.data.dassl_specs.DASSL_DATASETS`), e.g.::

    root/caltech-101/101_ObjectCategories/<class>/<image>.jpg
    root/caltech-101/split_zhou_Caltech101.json
    root/oxford_pets/images/*.jpg
    root/oxford_pets/split_zhou_OxfordPets.json
    root/imagenet/images/{train,val}/<wnid>/*.JPEG   + root/imagenet/classnames.txt
    root/fgvc_aircraft/images/*.jpg + variants.txt + images_variant_{train,val,test}.txt

The split files themselves are hosted by CoOp (Google Drive links in its ``DATASETS.md``).
Labels are taken as written in the split file; class names come from it with underscores
replaced by spaces. ImageNet has no Zhou split file: train/test come from the folders (CoOp's
``val`` folder is the test set) and there is no validation split.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pyro_clip.data._files import ImageFiles
from pyro_clip.data.dassl_specs import COOP_DATASETS_URL, DasslSpec, get_dassl_spec
from pyro_clip.data.dassl_splits import (
    Items,
    read_fgvc_split,
    read_imagenet_split,
    read_zhou_split,
)
from pyro_clip.errors import DataError

SPLITS = ("train", "val", "test")


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose one of {list(SPLITS)}")


def _missing_split_file_message(spec: DasslSpec, path: Path) -> str:
    if spec.format == "zhou":
        return (
            f"split file {path} not found. CoOp hosts {path.name} (Google Drive link in "
            f"{COOP_DATASETS_URL}, section for {spec.name}); download it to {path}, or pass "
            "split_file=..."
        )
    return f"{path} not found; it ships with the {spec.name} download (see {COOP_DATASETS_URL})"


def read_dassl_items(
    spec: DasslSpec, image_dir: Path, split_file: Path, split: str
) -> tuple[Items, list[str]]:
    """Dispatch to the reader for ``spec.format`` (see :mod:`pyro_clip.data.dassl_splits`)."""
    _check_split(split)
    if not split_file.is_file():
        raise DataError(_missing_split_file_message(spec, split_file))
    if spec.format == "imagenet":
        return read_imagenet_split(image_dir, split_file, split)
    if spec.format == "fgvc":
        return read_fgvc_split(split_file, split)
    return read_zhou_split(split_file, split)


class DasslSplitImages(ImageFiles):
    """One split (``train`` / ``val`` / ``test``) of a CoOp/Dassl benchmark.

    Args:
        root: the data root that holds one folder per benchmark (CoOp's ``$DATA``).
        dataset: a name from :func:`~pyro_clip.data.dassl_specs.dassl_names` (aliases such
            as ``"Caltech101"`` or ``"flowers102"`` are accepted).
        split: ``"train"``, ``"val"`` or ``"test"``.
        image_dir: override the image folder (default: ``root / spec.image_dir``).
        split_file: override the split file (default: ``root / spec.split_file``).
        skip_corrupt: decode every image up front and drop the unreadable ones (listed in
            ``.skipped``, counted in the run's ``data_report``); default: a corrupt file stops
            the run when it is decoded.

    Every listed image must exist (checked up front; the first missing one is named).
    """

    def __init__(
        self,
        root: str | Path,
        dataset: str,
        split: str,
        image_dir: str | Path | None = None,
        split_file: str | Path | None = None,
        skip_corrupt: bool = False,
    ) -> None:
        self.spec = get_dassl_spec(dataset)
        self.skipped: list[Path] = []
        root = Path(root).expanduser()
        if not root.is_dir():
            raise DataError(
                f"data root {root} does not exist; pass the folder that contains "
                f"{self.spec.folder}/ (CoOp's $DATA)"
            )
        self.image_dir = Path(image_dir) if image_dir else root / self.spec.image_dir
        self.split_file = Path(split_file) if split_file else root / str(self.spec.split_file)
        if not self.image_dir.is_dir():
            raise DataError(
                f"image folder {self.image_dir} for {self.spec.name} does not exist; see "
                f"{COOP_DATASETS_URL} for the layout, or pass image_dir=..."
            )
        items, self.classnames = read_dassl_items(self.spec, self.image_dir, self.split_file, split)
        if not items:
            raise DataError(f"{self.split_file} lists no {split!r} images")
        self.paths = [self.image_dir / rel for rel, _ in items]
        missing = [p for p in self.paths if not p.is_file()]
        if missing:
            raise DataError(
                f"image {missing[0]} listed in {self.split_file} ({split}) is missing "
                f"({len(missing)} of {len(self.paths)} missing); check image_dir "
                f"{self.image_dir}"
            )
        self._labels = np.asarray([label for _, label in items], dtype=np.int64)
        self.name = f"{self.spec.name}/{split}"
        self.base_dir = self.image_dir
        if skip_corrupt:
            self.drop_corrupt()



def validate_dassl_layout(
    root: str | Path,
    dataset: str,
    splits: tuple[str, ...] = SPLITS,
    max_listed: int = 20,
) -> list[str]:
    """Dry-run check of a benchmark's layout; returns the problems found (empty = ready).

    Missing folders, split files and images are reported, not raised; at most ``max_listed``
    missing images are named, followed by a count of the rest. An unknown ``dataset`` still
    raises ``DataError``. ImageNet's ``"val"`` split is skipped (it has none).
    """
    spec = get_dassl_spec(dataset)
    root = Path(root).expanduser()
    if not root.is_dir():
        return [f"data root {root} does not exist"]
    image_dir = root / spec.image_dir
    split_file = root / str(spec.split_file)
    problems: list[str] = []
    if not image_dir.is_dir():
        problems.append(f"image folder {image_dir} does not exist")
    if not split_file.is_file():
        problems.append(_missing_split_file_message(spec, split_file))
        return problems
    missing: list[Path] = []
    for split in splits:
        if spec.format == "imagenet" and split == "val":
            continue
        try:
            items, _ = read_dassl_items(spec, image_dir, split_file, split)
        except DataError as exc:
            problems.append(str(exc))
            continue
        if image_dir.is_dir():
            missing.extend(image_dir / rel for rel, _ in items if not (image_dir / rel).is_file())
    problems.extend(f"missing image {p}" for p in missing[:max_listed])
    if len(missing) > max_listed:
        problems.append(f"... and {len(missing) - max_listed} more missing images")
    return problems
