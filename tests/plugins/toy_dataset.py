"""A data set plug-in in one file: noisy solid-colour images of three classes.

Importing this module registers ``toy-colours``; ``per_class`` (images per class and split,
default 4) is its one keyword. Pixels are a class's pure colour plus uniform noise in
[0, 60), drawn from a generator seeded by the split, so every call gives the same images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pyro_clip.data import DataSource, register_dataset
from pyro_clip.data.arrays import ArrayImages

CLASSNAMES = ("red", "green", "blue")
SIZE = 8


@register_dataset
class ToyColours(DataSource):
    """``toy-colours[:per_class=N]``: 8 x 8 RGB images, one pure channel per class."""

    name = "toy-colours"
    description = "test plug-in: noisy red / green / blue squares (per_class)"
    keywords = ("per_class",)
    reads_files = False  # made in memory: no --data-root

    def load(self, name: str, split: str, root: str | Path | None, skip_corrupt: bool,
             per_class: int = 4, **kw: Any) -> ArrayImages:
        rng = np.random.default_rng(["train", "val", "test"].index(split))
        labels = np.repeat(np.arange(len(CLASSNAMES)), per_class)
        pixels = rng.integers(0, 60, size=(len(labels), SIZE, SIZE, 3))
        pixels[np.arange(len(labels)), :, :, labels] += 195  # the class's channel near 255
        return ArrayImages(pixels.astype(np.uint8), labels, CLASSNAMES, f"{self.name}/{split}")
