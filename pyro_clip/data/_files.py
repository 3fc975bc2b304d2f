"""Shared base for data sets whose images are files on disk (folders, Dassl splits, variants)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from pyro_clip.data._decode import decode_rgb
from pyro_clip.data._hashing import file_keys, files_fingerprint
from pyro_clip.data.base import LabeledImages


class ImageFiles(LabeledImages):
    """Subclasses set ``paths``, ``base_dir`` (what relative paths are taken against),
    ``_labels``, ``classnames`` and ``name``; decoding and fingerprinting live here."""

    paths: list[Path]
    base_dir: Path
    _labels: np.ndarray
    #: appended to decode errors (e.g. how to skip corrupt files)
    decode_hint: str = ""
    _fingerprint: str | None = None
    _item_keys: list[str] | None = None

    @property
    def labels(self) -> np.ndarray:
        return self._labels

    def load_image(self, index: int) -> Image.Image:
        return decode_rgb(self.paths[index], self.decode_hint)

    def relpaths(self) -> list[str]:
        """Paths relative to ``base_dir``, POSIX style."""
        return [p.relative_to(self.base_dir).as_posix() for p in self.paths]

    def item_keys(self) -> list[str]:
        """Per-file keys: path, size and mtime, or content with ``PYRO_CLIP_HASH=content``
        (see :mod:`pyro_clip.data._hashing`); computed once per instance."""
        if self._item_keys is None:
            self._item_keys = file_keys(self.paths, self.relpaths())
        return self._item_keys

    def fingerprint(self) -> str:
        """sha256 over the per-file keys, relative paths, labels and class names."""
        if self._fingerprint is None:
            self._fingerprint = files_fingerprint(
                self.item_keys(), self.relpaths(), self._labels, self.classnames
            )
        return self._fingerprint
