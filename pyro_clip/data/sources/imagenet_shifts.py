"""ImageNet-V2/-Sketch/-A/-R (:mod:`pyro_clip.data.imagenet_variants`): evaluation only,
with the training set's prompt templates."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pyro_clip.data.base import LabeledImages
from pyro_clip.data.imagenet_variants import (
    ImageNetVariantImages,
    resolve_variant,
    validate_variant_layout,
    variant_names,
)
from pyro_clip.data.registry import register_dataset
from pyro_clip.data.sources.base import DataSource, require_root


@register_dataset
class ImageNetShifts(DataSource):
    """The four distribution-shift test sets of ImageNet, in CoOp's layout."""

    description = "ImageNet variant under --data-root (evaluation only)"
    order = 20

    def names(self) -> list[str]:
        return variant_names()

    def resolve(self, name: str) -> str | None:
        spec = resolve_variant(name)
        return None if spec is None else spec.name

    def evaluation_only(self, name: str) -> str | None:
        return f"train on imagenet and list {name} under eval_datasets"

    def layout_problems(self, name: str, root: str | Path) -> list[str]:
        return validate_variant_layout(root, name)

    def load(self, name: str, split: str, root: str | Path | None, skip_corrupt: bool,
             **kw: Any) -> LabeledImages:
        return ImageNetVariantImages(require_root(name, root), name, split,
                                     skip_corrupt=skip_corrupt)
