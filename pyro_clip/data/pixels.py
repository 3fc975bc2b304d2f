"""Lazy pixel rows: what methods that run the image encoder in training (MaPLe) get.

``PixelRows`` stands where a cached ``(N, D)`` feature tensor would be in a
:class:`~pyro_clip.features.cache.FeatureSet` (``features["pixels"]``): it indexes like a tensor
(``rows[idx]`` with a slice, index tensor or array returns new rows, so ``subset`` and
``restrict_classes`` work) and decodes + preprocesses images only in :meth:`load`, so a test
split never sits in memory as 224 x 224 floats.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from pyro_clip.data.augment import augment_image, view_seed
from pyro_clip.data.base import LabeledImages


class PixelRows:
    """Rows ``indices`` of ``images`` through ``preprocess`` (PIL -> (3, H, W)), decoded lazily."""

    def __init__(self, images: LabeledImages, preprocess: Callable[[Image.Image], torch.Tensor],
                 indices: np.ndarray | None = None) -> None:
        self.images = images
        self.preprocess = preprocess
        self.indices = (np.arange(len(images), dtype=np.int64) if indices is None
                        else np.asarray(indices, dtype=np.int64))

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    @property
    def shape(self) -> tuple[int]:
        return (len(self),)

    def __getitem__(self, idx) -> PixelRows:
        if isinstance(idx, torch.Tensor):
            idx = idx.cpu().numpy()
        return PixelRows(self.images, self.preprocess, self.indices[idx])

    def load(self, augment: str = "none", views: Sequence[int] | None = None,
             seed: int = 0) -> torch.Tensor:
        """(N, 3, H, W) pixels; with ``augment``, row r gets view ``views[r]`` of its image,
        the same draw as :class:`~pyro_clip.data.augment.AugmentedView` (image = source row)."""
        out = []
        for r, i in enumerate(self.indices.tolist()):
            image = self.images.load_image(i)
            if augment != "none":
                assert views is not None, "augmented loading needs one view index per row"
                image = augment_image(image, augment, view_seed(augment, int(views[r]), seed, i))
            out.append(self.preprocess(image))
        return torch.stack(out)
