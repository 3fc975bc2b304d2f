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
