"""The labelled-image interface every data source implements.

A data set is an indexable collection of RGB PIL images with integer labels, its class names,
a fingerprint of the whole set, and one key per image (:meth:`LabeledImages.item_keys`) under
which the feature cache stores that image's features. Labels are readable without decoding
images so that few-shot sampling never touches pixels.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np
from PIL import Image


class LabeledImages(ABC):
    """Abstract labelled image collection (train, val or test split of one data set)."""

    #: short identifier, e.g. ``"fashion-mnist/train"``
    name: str
    #: human-readable class names, index = label
    classnames: list[str]

    @property
    @abstractmethod
    def labels(self) -> np.ndarray:
        """Integer labels, shape ``(N,)``, dtype int64."""

    @abstractmethod
    def load_image(self, index: int) -> Image.Image:
        """Decode image ``index`` as an RGB PIL image (raises ``DataError`` if corrupt)."""

    @abstractmethod
    def fingerprint(self) -> str:
        """Hex digest that changes whenever any image content, label or class name changes."""

    def item_keys(self) -> list[str]:
        """One hex key per image that changes when that image changes (not its label).

        Default: the set's fingerprint and the index, so nothing is shared across sets;
        sources override it with a key of the image alone (pixels, or file path/size/mtime),
        which lets overlapping subsets, shots and seeds share cached features.
        """
        fp = self.fingerprint()
        return [hashlib.sha256(f"{fp}:{i}".encode()).hexdigest() for i in range(len(self))]

    def __len__(self) -> int:
        return int(len(self.labels))

    @property
    def num_classes(self) -> int:
        return len(self.classnames)


class SubsetImages(LabeledImages):
    """A view of ``base`` restricted to ``indices``; optionally relabelled to ``class_ids`` order.

    With ``class_ids`` given, only those classes are kept and label ``class_ids[k]`` becomes ``k``.
    """

    def __init__(
        self,
        base: LabeledImages,
        indices: Sequence[int] | np.ndarray,
        class_ids: Sequence[int] | None = None,
        name: str | None = None,
    ) -> None:
        self.base = base
        self.indices = np.asarray(indices, dtype=np.int64)
        base_labels = base.labels[self.indices]
        if class_ids is None:
            self.classnames = list(base.classnames)
            self._labels = base_labels.copy()
        else:
            class_ids = [int(c) for c in class_ids]
            remap = {c: k for k, c in enumerate(class_ids)}
            missing = set(np.unique(base_labels).tolist()) - set(remap)
            if missing:
                raise ValueError(f"indices include classes {sorted(missing)} not in class_ids")
            self.classnames = [base.classnames[c] for c in class_ids]
            self._labels = np.array([remap[int(y)] for y in base_labels], dtype=np.int64)
        self.name = name or f"{base.name}[{len(self.indices)}]"

    @property
    def labels(self) -> np.ndarray:
        return self._labels

    def load_image(self, index: int) -> Image.Image:
        return self.base.load_image(int(self.indices[index]))

    def item_keys(self) -> list[str]:
        keys = self.base.item_keys()
        return [keys[i] for i in self.indices]

    def fingerprint(self) -> str:
        h = hashlib.sha256(self.base.fingerprint().encode())
        h.update(self.indices.tobytes())
        h.update(self._labels.tobytes())
        h.update("\x00".join(self.classnames).encode())
        return h.hexdigest()
