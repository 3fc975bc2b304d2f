"""``fashion-mnist``: the embedded class-balanced subset (:mod:`pyro_clip.data.embedded`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pyro_clip.data.base import LabeledImages
from pyro_clip.data.embedded import load_embedded
from pyro_clip.data.registry import register_dataset
from pyro_clip.data.sources.base import DataSource, RunDefaults


@register_dataset
class FashionMnist(DataSource):
    """Offline; ``invert`` as :func:`~pyro_clip.data.embedded.load_embedded` takes it."""

    name = "fashion-mnist"
    description = "embedded, offline: class-balanced Fashion-MNIST subset (train/val/test)"
    order = 0
    keywords = ("invert",)
    reads_files = False
    #: Fashion-MNIST is 28 x 28 px with the object filling the frame: a random resized crop
    #: (scale 0.08-1, the papers' choice for >= 224 px natural images) keeps as little as
    #: 8 x 8 px of it and costs every method that trains with it; flips alone are within noise
    #: of no augmentation for Tip-Adapter(-F) and unstable for CoOp at 16 shots, so none is the
    #: measured-best default here (docs/ove_pg.md "augmentation", docs/baselines.md)
    defaults = RunDefaults(companions=("fashion-mnist-c",), augment="none")

    def load(self, name: str, split: str, root: str | Path | None, skip_corrupt: bool,
             **kw: Any) -> LabeledImages:
        return load_embedded(split, **kw)  # embedded images cannot be corrupt
