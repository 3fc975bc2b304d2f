"""Types shared by every layer: a split's image features (``pyro_clip.Features``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from pyro_clip.errors import DataError

#: the feature kind of the shared image-text embedding space (``Features.x``)
JOINT = "joint"


def _as_tensor(value: Any, what: str) -> torch.Tensor:
    try:
        return torch.as_tensor(np.asarray(value) if not isinstance(value, torch.Tensor) else value)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise DataError(f"Features: {what} must be a tensor or array, got "
                        f"{type(value).__name__}") from exc


@dataclass
class FeatureSet:
    """Image features of one split with their labels and class names; public as
    ``pyro_clip.Features``.

    ``features[kind]`` is (N, D) per feature kind (``"joint"`` is the image-text space, also
    ``x``; augmented views and other kinds sit beside it), ``labels`` (N,) class indices into
    ``classnames`` (also ``y``). ``text`` (C, D), optional: one class embedding per class name
    in the joint space, which lets weight-space methods fit and predict without a backbone.
    ``images``, optional: the labelled images the rows were encoded from
    (``pyro_clip.encode`` sets it), for methods that encode augmented views or train the
    image encoder.

    >>> import torch
    >>> f = FeatureSet(torch.randn(4, 3), torch.tensor([0, 1, 1, 0]), ["cat", "dog"])
    >>> f.x.shape, f.y.tolist(), len(f)
    (torch.Size([4, 3]), [0, 1, 1, 0], 4)
    """

    features: dict[str, Any]
    labels: torch.Tensor
    classnames: list[str]
    name: str = "features"
    text: torch.Tensor | None = None
    images: Any = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        """Inputs are normalised and checked where features are put together: labels 1-D
        integers in ``0..C-1`` for the ``C`` unique class names, one per feature row."""
        if not isinstance(self.name, str):
            raise DataError(f"Features: name must be a string, got {type(self.name).__name__}; "
                            "pass class text embeddings as text=...")
        if not isinstance(self.features, Mapping):  # plain (N, D) features: the joint space
            self.features = {JOINT: _as_tensor(self.features, "x")}
        self.features = dict(self.features)
        self.labels = _as_tensor(self.labels, "y")
        self.classnames = list(self.classnames)
        y = self.labels
        if y.ndim != 1 or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            raise DataError(f"FeatureSet {self.name!r}: labels must be a 1-D integer tensor, "
                            f"got {y.dtype} {tuple(y.shape)}; pass torch.tensor(labels, "
                            "dtype=torch.long)")
        self.labels = y = y.long()
        n_classes = len(self.classnames)
        bad = ((y < 0) | (y >= n_classes)).nonzero().flatten()
        if len(bad):
            row = int(bad[0])
            raise DataError(
                f"FeatureSet {self.name!r}: label {int(y[row])} (row {row}, {len(bad)} such "
                f"rows) is outside 0..{n_classes - 1} for its {n_classes} class names; labels "
                "index classnames: give every class a name, or relabel"
            )
        for kind, x in self.features.items():
            if isinstance(x, torch.Tensor) and (x.ndim != 2 or x.shape[0] != y.shape[0]):
                raise DataError(
                    f"FeatureSet {self.name!r}: features {kind!r} have shape {tuple(x.shape)} "
                    f"but there are {y.shape[0]} labels; pass one (N, D) feature row per label"
                )
        if len(set(self.classnames)) != len(self.classnames):
            raise DataError("Features: class names must be unique; rename the duplicates")
        if self.text is not None:
            self.text = _as_tensor(self.text, "text")
            if self.text.ndim != 2 or self.text.shape[0] != len(self.classnames):
                raise DataError(f"Features: text must be (C, D) with one row per class name "
                                f"(C = {len(self.classnames)}), got {tuple(self.text.shape)}")

    @property
    def x(self) -> torch.Tensor:
        """(N, D) features in the joint image-text space."""
        if JOINT not in self.features:
            raise DataError(f"Features {self.name!r} hold no joint-space features (kinds: "
                            f"{sorted(self.features)}); encode the images with pyro_clip.encode")
        return self.features[JOINT]

    @property
    def y(self) -> torch.Tensor:
        """(N,) labels (alias of ``labels``)."""
        return self.labels

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, indices: np.ndarray | torch.Tensor, class_ids: Sequence[int] | None = None):
        """Rows ``indices``; with ``class_ids``, relabel class ``class_ids[k]`` to ``k``."""
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        labels = self.labels[idx]
        classnames, text = self.classnames, self.text
        if class_ids is not None:
            remap = torch.full((len(self.classnames),), -1, dtype=torch.long)
            remap[torch.as_tensor(class_ids)] = torch.arange(len(class_ids))
            labels = remap[labels]
            if (labels < 0).any():
                raise DataError("subset rows include classes outside class_ids")
            classnames = [self.classnames[c] for c in class_ids]
            text = None if text is None else text[torch.as_tensor(list(class_ids))]
        return FeatureSet(
            {k: v[idx] for k, v in self.features.items()}, labels, classnames, self.name, text
        )

    def restrict_classes(self, class_ids: list[int]) -> FeatureSet:
        """Keep only rows of ``class_ids`` and relabel them ``0..len(class_ids)-1``."""
        keep = torch.isin(self.labels, torch.as_tensor(class_ids)).nonzero().flatten()
        return self.subset(keep, class_ids)
