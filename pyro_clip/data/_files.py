"""Shared base for data sets whose images are files on disk (folders, Dassl splits, variants)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from pyro_clip.data._decode import decode_rgb, verify_image
from pyro_clip.data._hashing import file_keys, files_fingerprint
from pyro_clip.data.base import LabeledImages
from pyro_clip.errors import DataError

#: appended to every decode error of a file-based data set: how to skip corrupt files
SKIP_HINT = (" Pass --skip-corrupt (YAML: skip_corrupt: true; Python: skip_corrupt=True) to "
             "skip unreadable images; the number skipped is reported in the run's config.json "
             "(data_report).")


class ImageFiles(LabeledImages):
    """Subclasses set ``paths``, ``base_dir`` (what relative paths are taken against),
    ``_labels``, ``classnames`` and ``name``; decoding and fingerprinting live here."""

    paths: list[Path]
    base_dir: Path
    _labels: np.ndarray
    #: appended to decode errors (how to skip corrupt files)
    decode_hint: str = SKIP_HINT
    #: files left out because they could not be decoded (``skip_corrupt``)
    skipped: list[Path]
    _fingerprint: str | None = None
    _item_keys: list[str] | None = None

    @property
    def n_skipped(self) -> int:
        return len(getattr(self, "skipped", []))

    def drop_corrupt(self) -> None:
        """Decode every image once, drop the unreadable ones from ``paths`` / ``labels``,
        record them in ``skipped`` and warn with their count (``skip_corrupt=True``).

        A class left without images is an error naming it (few-shot sampling needs it)."""
        bad = {i for i, p in enumerate(self.paths) if verify_image(p) is not None}
        self.skipped = [self.paths[i] for i in sorted(bad)]
        if not bad:
            return
        keep = np.asarray([i not in bad for i in range(len(self.paths))])
        before = set(self._labels.tolist())
        self.paths = [p for p, k in zip(self.paths, keep, strict=True) if k]
        self._labels = self._labels[keep]
        emptied = sorted(before - set(self._labels.tolist()))
        if emptied:
            names = [self.classnames[c] for c in emptied]
            raise DataError(f"{self.name}: class(es) {names} have no readable images left "
                            f"({len(bad)} corrupt file(s) skipped, first {self.skipped[0]}); "
                            "replace the corrupt files")
        warnings.warn(f"{self.name}: skipped {len(bad)} corrupt image(s) (first: "
                      f"{self.skipped[0]}); see .skipped", stacklevel=3)

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
