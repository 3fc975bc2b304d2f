"""Augmented views as cached feature sets, and sampling one view per image per epoch.

Methods on cached features get ``n_views`` augmented copies of each training image
(:class:`~pyro_clip.data.augment.AugmentedView`), each encoded once and cached like any other
feature set (as Tip-Adapter caches its augmented epochs); training samples one view per image
per epoch. The view's fingerprint includes augmentation, view and seed, so
:class:`~pyro_clip.features.cache.FeatureCache` needs no change.
"""

from __future__ import annotations

import numpy as np
import torch

from pyro_clip.data.augment import AugmentedView, check_augment
from pyro_clip.data.base import LabeledImages
from pyro_clip.errors import ConfigError


def view_key(kind: str, view: int) -> str:
    """Feature-set key of augmented view ``view`` of feature kind ``kind``."""
    return f"{kind}/view{view}"


def encode_views(
    backbone, images: LabeledImages, augment: str, n_views: int, seed: int,
    cache=None, batch_size: int = 64, progress: bool = False,
) -> dict[str, torch.Tensor]:
    """``{view_key(kind, v): (N, D)}`` for v < n_views, each view encoded once and cached."""
    from pyro_clip.features.cache import FeatureCache  # features imports data: import late

    check_augment(augment, n_views)
    cache = cache if cache is not None else FeatureCache()
    out: dict[str, torch.Tensor] = {}
    for v in range(n_views):
        feats = cache.get(backbone, AugmentedView(images, augment, v, seed), batch_size,
                          progress)
        out.update({view_key(k, v): t for k, t in feats.features.items()})
    return out


def training_views(features: dict[str, torch.Tensor], kind: str, augment: str, n_views: int,
                   who: str) -> torch.Tensor:
    """(V, N, D) training features: the ``n_views`` cached views, or the plain ones (V = 1)."""
    if augment == "none":
        return features[kind][None]
    keys = [view_key(kind, v) for v in range(n_views)]
    missing = [k for k in keys if k not in features]
    if missing:
        raise ConfigError(
            f"{who}: augment={augment} needs {n_views} augmented views of the training images "
            f"(missing {missing[0]!r}); pyro-clip fit encodes them, or pass augment=none")
    return torch.stack([features[k] for k in keys])


class ViewSampler:
    """``sampler(idx)`` -> one uniformly drawn view per row of ``views`` (V, N, D), seeded.

    Minibatch training visits every image once per epoch, so this is one fresh view per image
    per epoch, as an augmenting data loader gives."""

    def __init__(self, views: torch.Tensor, seed: int) -> None:
        self.views = views
        #: a NumPy generator so that the training loop checkpoints its state (resume = no kill)
        self.generator = np.random.default_rng(seed)

    def draw(self, idx: torch.Tensor) -> torch.Tensor:
        """(len(idx),) view indices."""
        return torch.as_tensor(self.generator.integers(self.views.shape[0], size=len(idx)),
                               dtype=torch.long)

    def __call__(self, idx: torch.Tensor) -> torch.Tensor:
        return self.views[self.draw(idx), idx]
