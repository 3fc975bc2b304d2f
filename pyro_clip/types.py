"""Types shared by every layer: a split's cached features."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pyro_clip.errors import DataError


@dataclass
class FeatureSet:
    """Cached image features of one split: ``features[kind]`` (N, D) float32 and ``labels`` (N,)."""

    features: dict[str, torch.Tensor]
    labels: torch.Tensor
    classnames: list[str]
    name: str

    def __post_init__(self) -> None:
        """Labels are checked where features are put together: 1-D integers in ``0..C-1``
        for the ``C`` class names, one per feature row."""
        y = self.labels
        if not isinstance(y, torch.Tensor) or y.ndim != 1 or y.is_floating_point() \
                or y.is_complex() or y.dtype == torch.bool:
            what = f"{y.dtype} {tuple(y.shape)}" if isinstance(y, torch.Tensor) else type(y)
            raise DataError(f"FeatureSet {self.name!r}: labels must be a 1-D integer tensor, "
                            f"got {what}; pass torch.tensor(labels, dtype=torch.long)")
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
            if isinstance(x, torch.Tensor) and (x.ndim == 0 or x.shape[0] != y.shape[0]):
                raise DataError(
                    f"FeatureSet {self.name!r}: features {kind!r} have shape {tuple(x.shape)} "
                    f"but there are {y.shape[0]} labels; pass one feature row per label"
                )

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, indices: np.ndarray | torch.Tensor, class_ids: list[int] | None = None):
        """Rows ``indices``; with ``class_ids``, relabel class ``class_ids[k]`` to ``k``."""
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        labels = self.labels[idx]
        classnames = self.classnames
        if class_ids is not None:
            remap = torch.full((len(self.classnames),), -1, dtype=torch.long)
            remap[torch.as_tensor(class_ids)] = torch.arange(len(class_ids))
            labels = remap[labels]
            if (labels < 0).any():
                raise DataError("subset rows include classes outside class_ids")
            classnames = [self.classnames[c] for c in class_ids]
        return FeatureSet(
            {k: v[idx] for k, v in self.features.items()}, labels, classnames, self.name
        )

    def restrict_classes(self, class_ids: list[int]) -> FeatureSet:
        """Keep only rows of ``class_ids`` and relabel them ``0..len(class_ids)-1``."""
        keep = torch.isin(self.labels, torch.as_tensor(class_ids)).nonzero().flatten()
        return self.subset(keep, class_ids)
