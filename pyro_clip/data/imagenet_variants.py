"""ImageNet distribution-shift test sets in CoOp's ``DATASETS.md`` layout (evaluation only).

Under the data root (CoOp's ``$DATA``), next to ``imagenet/classnames.txt``::

    imagenetv2/imagenetv2-matched-frequency-format-val/<class index 0..999>/*.jpeg
    imagenet-sketch/images/<wnid>/*.JPEG
    imagenet-adversarial/imagenet-a/<wnid>/*.jpg      (200 of the 1000 classes)
    imagenet-rendition/imagenet-r/<wnid>/*.jpg        (200 of the 1000 classes)

Class names come from ``imagenet/classnames.txt`` (``<wnid> <name>`` lines, label = rank of the
sorted wnid, as for ImageNet itself). ImageNet-A and -R hold 200 classes: their class names are
those 200 names (labels 0..199 in sorted wnid order), so a 1000-class model is evaluated on the
subset by ``predict(features, classnames)`` (Hendrycks et al. 2021; CoOp does the same).
Each variant has only a ``test`` split.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pyro_clip.data._decode import is_image_file
from pyro_clip.data._files import ImageFiles
from pyro_clip.data.dassl_specs import COOP_DATASETS_URL
from pyro_clip.data.dassl_splits import read_imagenet_classnames
from pyro_clip.errors import DataError

CLASSNAMES_FILE = "imagenet/classnames.txt"


@dataclass(frozen=True)
class VariantSpec:
    """Where one variant lives under the root and how its class folders are named."""

    name: str
    image_dir: str
    #: ``"index"``: folders ``0..999`` (ImageNet-V2); ``"wnid"``: folders named by WordNet id
    folders: str
    #: number of classes the variant covers (a subset of the 1000 for -A and -R)
    num_classes: int


IMAGENET_VARIANTS: dict[str, VariantSpec] = {
    s.name: s
    for s in (
        VariantSpec("imagenet-v2", "imagenetv2/imagenetv2-matched-frequency-format-val",
                    "index", 1000),
        VariantSpec("imagenet-sketch", "imagenet-sketch/images", "wnid", 1000),
        VariantSpec("imagenet-a", "imagenet-adversarial/imagenet-a", "wnid", 200),
        VariantSpec("imagenet-r", "imagenet-rendition/imagenet-r", "wnid", 200),
    )
}
_ALIASES = {"imagenetv2": "imagenet-v2", "imagenetsketch": "imagenet-sketch",
            "imageneta": "imagenet-a", "imagenetr": "imagenet-r"}


def variant_names() -> list[str]:
    """Canonical names of the supported ImageNet variants."""
    return list(IMAGENET_VARIANTS)


def resolve_variant(name: str) -> VariantSpec | None:
    """The spec for ``name`` (case, ``-`` and ``_`` ignored), or None."""
    key = "".join(ch for ch in name.lower() if ch.isalnum())
    canonical = _ALIASES.get(key)
    return IMAGENET_VARIANTS[canonical] if canonical else None


def _class_folders(spec: VariantSpec, image_dir: Path, wnids: list[str]) -> list[tuple[Path, str]]:
    """``(folder, wnid)`` of every class present, in label order (sorted wnid)."""
    if spec.folders == "index":
        pairs = [(image_dir / str(k), wnid) for k, wnid in enumerate(wnids)]
        return [(p, w) for p, w in pairs if p.is_dir()]
    known = set(wnids)
    present = sorted(p.name for p in image_dir.iterdir() if p.is_dir())
    unknown = [w for w in present if w not in known]
    if unknown:
        raise DataError(
            f"{image_dir} has class folders {unknown[:5]} that are not wnids of "
            f"{CLASSNAMES_FILE}; use the classnames.txt that ships with CoOp's ImageNet layout"
        )
    return [(image_dir / w, w) for w in present]


class ImageNetVariantImages(ImageFiles):
    """The test images of one ImageNet variant (see the module docstring for the layout).

    Args:
        root: the data root holding ``imagenet/classnames.txt`` and the variant's folder.
        name: one of :func:`variant_names` (``"imagenet-v2"``, ``"imagenet-sketch"``,
            ``"imagenet-a"``, ``"imagenet-r"``; ``"ImageNetV2"`` etc. also accepted).
        split: must be ``"test"``: the variants are evaluation sets.
        skip_corrupt: decode every image up front and drop the unreadable ones.
    """

    def __init__(self, root: str | Path, name: str, split: str = "test",
                 skip_corrupt: bool = False) -> None:
        self.skipped: list[Path] = []
        spec = resolve_variant(name)
        if spec is None:
            raise DataError(f"unknown ImageNet variant {name!r}; known: {variant_names()}")
        if split != "test":
            raise DataError(
                f"{spec.name} is an evaluation-only set with a 'test' split; train on 'imagenet' "
                f"and pass {spec.name} as an evaluation data set (eval_datasets)"
            )
        self.spec = spec
        root = Path(root).expanduser()
        names_file = root / CLASSNAMES_FILE
        if not names_file.is_file():
            raise DataError(
                f"{names_file} not found; {spec.name} takes its class names from "
                f"ImageNet's classnames.txt (see {COOP_DATASETS_URL})"
            )
        wnid_names = read_imagenet_classnames(names_file)
        self.image_dir = root / spec.image_dir
        if not self.image_dir.is_dir():
            raise DataError(
                f"image folder {self.image_dir} for {spec.name} does not exist; see "
                f"{COOP_DATASETS_URL} for the layout"
            )
        wnids = list(wnid_names)
        folders = _class_folders(spec, self.image_dir, wnids)
        if len(folders) != spec.num_classes:
            raise DataError(
                f"{self.image_dir} holds {len(folders)} class folders; {spec.name} has "
                f"{spec.num_classes} (check that the download is complete)"
            )
        paths: list[Path] = []
        labels: list[int] = []
        for label, (folder, _) in enumerate(folders):
            files = sorted(p for p in folder.iterdir() if is_image_file(p))
            if not files:
                raise DataError(f"class folder {folder} of {spec.name} contains no images")
            paths.extend(files)
            labels.extend([label] * len(files))
        self.classnames = [wnid_names[w] for _, w in folders]
        self.paths = paths
        self._labels = np.asarray(labels, dtype=np.int64)
        self.name = f"{spec.name}/test"
        self.base_dir = self.image_dir
        if skip_corrupt:
            self.drop_corrupt()



def validate_variant_layout(root: str | Path, name: str) -> list[str]:
    """Dry-run check (no image is decoded); returns the problems found (empty = ready)."""
    spec = resolve_variant(name)
    if spec is None:
        raise DataError(f"unknown ImageNet variant {name!r}; known: {variant_names()}")
    root = Path(root).expanduser()
    if not root.is_dir():
        return [f"data root {root} does not exist"]
    problems = []
    if not (root / CLASSNAMES_FILE).is_file():
        problems.append(f"{root / CLASSNAMES_FILE} not found (class names of {spec.name})")
    if not (root / spec.image_dir).is_dir():
        problems.append(f"image folder {root / spec.image_dir} for {spec.name} does not exist")
    if problems:
        return problems
    try:
        ImageNetVariantImages(root, spec.name)
    except DataError as exc:
        problems.append(str(exc))
    return problems
