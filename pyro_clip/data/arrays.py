"""In-memory labelled images held as one uint8 array (the embedded and shifted data sets)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
from PIL import Image

from pyro_clip.data.base import LabeledImages
from pyro_clip.errors import DataError


class ArrayImages(LabeledImages):
    """Images stored as a uint8 array ``(N, H, W)`` (grey) or ``(N, H, W, 3)`` (RGB).

    ``load_image`` returns an RGB PIL image. The fingerprint hashes the pixel bytes, the
    array shape, the labels, the class names and ``tag`` (free text describing how the pixels
    were made, e.g. ``"invert=1"``); the ``name`` is not part of it.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray | Sequence[int],
        classnames: Sequence[str],
        name: str,
        tag: str = "",
    ) -> None:
        images = np.asarray(images)
        labels = np.asarray(labels)
        if images.dtype != np.uint8 or images.ndim not in (3, 4):
            raise DataError(
                f"images must be a uint8 array of shape (N, H, W) or (N, H, W, 3), "
                f"got dtype {images.dtype} and shape {images.shape}"
            )
        if images.ndim == 4 and images.shape[3] != 3:
            raise DataError(f"colour images need 3 channels, got shape {images.shape}")
        if labels.ndim != 1 or len(labels) != len(images):
            raise DataError(
                f"need one label per image: {len(images)} images, labels of shape {labels.shape}"
            )
        if not np.issubdtype(labels.dtype, np.integer):
            raise DataError(f"labels must be integers, got dtype {labels.dtype}")
        if len(labels) and (labels.min() < 0 or labels.max() >= len(classnames)):
            raise DataError(
                f"labels must lie in 0..{len(classnames) - 1} (one per class name), "
                f"got {labels.min()}..{labels.max()}"
            )
        # a private, read-only copy: the caller's array is neither frozen nor aliased
        self._images = np.array(images, order="C", copy=True)
        self._images.setflags(write=False)
        self._labels = labels.astype(np.int64)
        self._labels.setflags(write=False)
        self.classnames = list(classnames)
        self.name = name
        self.tag = tag
        self._fingerprint: str | None = None
        self._item_keys: list[str] | None = None

    @property
    def labels(self) -> np.ndarray:
        return self._labels

    @property
    def images(self) -> np.ndarray:
        """The read-only pixel array."""
        return self._images

    def load_image(self, index: int) -> Image.Image:
        return Image.fromarray(self._images[index]).convert("RGB")

    def item_keys(self) -> list[str]:
        """sha256 of each image's shape and pixel bytes."""
        if self._item_keys is None:
            shape = repr(self._images.shape[1:]).encode()
            self._item_keys = [hashlib.sha256(shape + img.tobytes()).hexdigest()
                               for img in self._images]
        return self._item_keys

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            h = hashlib.sha256()
            h.update(repr(self._images.shape).encode())
            h.update(self._images.tobytes())
            h.update(self._labels.tobytes())
            h.update("\x00".join(self.classnames).encode())
            h.update(self.tag.encode())
            self._fingerprint = h.hexdigest()
        return self._fingerprint
