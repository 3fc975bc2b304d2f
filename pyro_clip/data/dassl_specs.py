"""Where the 11 CoOp/Dassl benchmarks live under a data root (CoOp's ``DATASETS.md`` layout)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from pyro_clip.errors import DataError

COOP_DATASETS_URL = "https://github.com/KaiyangZhou/CoOp/blob/main/DATASETS.md"

#: how the split is described: a Zhou JSON split file, ImageNet's folders + classnames.txt,
#: or FGVC-Aircraft's official ``images_variant_{split}.txt`` lists
SplitFormat = Literal["zhou", "imagenet", "fgvc"]

#: CLIP's plain prompt; CoOp's template for the data sets without a specific one
PLAIN_TEMPLATE = "a photo of a {}."


def imagenet_templates() -> tuple[str, ...]:
    """The 7-template ImageNet ensemble of the CLIP notebook and Tip-Adapter
    (``open_clip.zero_shot_metadata.SIMPLE_IMAGENET_TEMPLATES``, read lazily: importing
    open_clip is slow)."""
    from open_clip.zero_shot_metadata import SIMPLE_IMAGENET_TEMPLATES

    return tuple(t("{}") for t in SIMPLE_IMAGENET_TEMPLATES)


@dataclass(frozen=True)
class DasslSpec:
    """Layout of one benchmark, paths relative to the data root."""

    name: str
    image_dir: str
    split_file: str | None
    format: SplitFormat = "zhou"
    #: default prompt templates (CoOp's ``CUSTOM_TEMPLATES``; a callable is read lazily)
    templates: tuple[str, ...] | Callable[[], tuple[str, ...]] = (PLAIN_TEMPLATE,)
    #: default extra evaluation sets: the data set's own shifted companions
    companions: tuple[str, ...] = ()

    def default_templates(self) -> tuple[str, ...]:
        return self.templates() if callable(self.templates) else self.templates

    @property
    def folder(self) -> str:
        """The data set's own folder under the root (first component of ``image_dir``)."""
        return self.image_dir.split("/")[0]


DASSL_DATASETS: dict[str, DasslSpec] = {
    spec.name: spec
    for spec in (
        DasslSpec("imagenet", "imagenet/images", "imagenet/classnames.txt", "imagenet",
                  templates=imagenet_templates,
                  companions=("imagenet-v2", "imagenet-sketch", "imagenet-a", "imagenet-r")),
        DasslSpec(
            "caltech-101",
            "caltech-101/101_ObjectCategories",
            "caltech-101/split_zhou_Caltech101.json",
        ),
        DasslSpec("oxford_pets", "oxford_pets/images", "oxford_pets/split_zhou_OxfordPets.json",
                  templates=("a photo of a {}, a type of pet.",)),
        DasslSpec("stanford_cars", "stanford_cars", "stanford_cars/split_zhou_StanfordCars.json"),
        DasslSpec(
            "oxford_flowers", "oxford_flowers/jpg", "oxford_flowers/split_zhou_OxfordFlowers.json",
            templates=("a photo of a {}, a type of flower.",),
        ),
        DasslSpec("food-101", "food-101/images", "food-101/split_zhou_Food101.json",
                  templates=("a photo of {}, a type of food.",)),
        DasslSpec("fgvc_aircraft", "fgvc_aircraft/images", "fgvc_aircraft/variants.txt", "fgvc",
                  templates=("a photo of a {}, a type of aircraft.",)),
        DasslSpec("sun397", "sun397/SUN397", "sun397/split_zhou_SUN397.json"),
        DasslSpec("dtd", "dtd/images", "dtd/split_zhou_DescribableTextures.json",
                  templates=("{} texture.",)),
        DasslSpec("eurosat", "eurosat/2750", "eurosat/split_zhou_EuroSAT.json",
                  templates=("a centered satellite photo of {}.",)),
        DasslSpec("ucf101", "ucf101/UCF-101-midframes", "ucf101/split_zhou_UCF101.json",
                  templates=("a photo of a person doing {}.",)),
    )
}

_ALIASES = {
    "flowers102": "oxford_flowers",
    "oxfordflowers102": "oxford_flowers",
    "describabletextures": "dtd",
    "pets": "oxford_pets",
    "cars": "stanford_cars",
    "aircraft": "fgvc_aircraft",
    "imagenet1k": "imagenet",
}


def _normalise(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def dassl_names() -> list[str]:
    """Canonical names of the supported benchmarks."""
    return list(DASSL_DATASETS)


def resolve_dassl(name: str) -> DasslSpec | None:
    """The spec for ``name`` (case, ``-`` and ``_`` ignored; CoOp class names accepted)."""
    key = _normalise(name)
    for spec in DASSL_DATASETS.values():
        if _normalise(spec.name) == key:
            return spec
    alias = _ALIASES.get(key)
    return DASSL_DATASETS[alias] if alias else None


def get_dassl_spec(name: str) -> DasslSpec:
    """Like :func:`resolve_dassl` but an unknown name raises ``DataError`` listing the known."""
    spec = resolve_dassl(name)
    if spec is None:
        raise DataError(f"unknown Dassl data set {name!r}; known: {dassl_names()}")
    return spec
