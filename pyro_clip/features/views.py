"""Training-time augmentation as cached views: ``AugmentedView(images, augment, view, seed)``.

CoOp, CoCoOp, KgCoOp and MaPLe train with ``random_resized_crop`` (scale 0.08-1, aspect
3/4-4/3, torchvision's sampler) and ``random_flip`` (p = 0.5). Methods on cached features get
``n_views`` augmented copies of each training image, each encoded once and cached like any other
feature set (as Tip-Adapter caches its augmented epochs); training samples one view per image
per epoch. The view of image ``i`` depends only on ``(augment, view, seed, i)``, and the
fingerprint includes all three, so :class:`~pyro_clip.features.cache.FeatureCache` needs no change.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from PIL import Image
from torchvision import transforms

from pyro_clip.data.base import LabeledImages
from pyro_clip.errors import ConfigError

AUGMENTS = ("none", "flip", "crop-flip")
#: torchvision's defaults, as in Dassl's ``random_resized_crop`` used by CoOp/CoCoOp/MaPLe
CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)


def check_augment(augment: str, n_views: int) -> None:
    """Raise a :class:`ConfigError` naming the fix for a bad ``augment`` / ``n_views``."""
    if augment not in AUGMENTS:
        raise ConfigError(f"augment must be one of {AUGMENTS}, got {augment!r}")
    if isinstance(n_views, bool) or not isinstance(n_views, int) or n_views < 1:
        raise ConfigError(f"n_views (augmented views per training image) must be an integer "
                          f">= 1, got {n_views!r}")


def view_seed(augment: str, view: int, seed: int, index: int) -> int:
    """64-bit seed of one (augmentation, view, seed, image) combination (sha256, platform-free)."""
    text = f"{augment}|{view}|{seed}|{index}".encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") & ((1 << 63) - 1)


def augment_image(image: Image.Image, augment: str, seed: int) -> Image.Image:
    """One deterministic draw of ``augment`` on ``image`` (same size out as in).

    ``crop-flip``: torchvision ``RandomResizedCrop`` (resized back to the input size) then a
    horizontal flip with probability 1/2; ``flip``: the flip only. The RNG is forked and seeded,
    so the global torch RNG is untouched.
    """
    if augment == "none":
        return image
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if augment == "crop-flip":
            top, left, h, w = transforms.RandomResizedCrop.get_params(image, CROP_SCALE,
                                                                      CROP_RATIO)
            image = image.resize(image.size, Image.Resampling.BICUBIC,
                                 box=(left, top, left + w, top + h))
        if bool(torch.rand(()) < 0.5):
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return image


class AugmentedView(LabeledImages):
    """View ``view`` of ``base`` under ``augment``: same labels, augmented pixels."""

    def __init__(self, base: LabeledImages, augment: str, view: int, seed: int) -> None:
        check_augment(augment, view + 1)
        self.base, self.augment, self.view, self.seed = base, augment, view, seed
        self.classnames = list(base.classnames)
        self.name = f"{base.name}@{augment}:{view}"

    @property
    def labels(self):
        return self.base.labels

    def load_image(self, index: int) -> Image.Image:
        seed = view_seed(self.augment, self.view, self.seed, index)
        return augment_image(self.base.load_image(index), self.augment, seed)

    def fingerprint(self) -> str:
        h = hashlib.sha256(self.base.fingerprint().encode())
        h.update(f"augment={self.augment};view={self.view};seed={self.seed}".encode())
        return h.hexdigest()


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
