"""Training-time image augmentation: ``AugmentedView(images, augment, view, seed)``.

CoOp, CoCoOp, KgCoOp and MaPLe train with ``random_resized_crop`` (scale 0.08-1, aspect
3/4-4/3, torchvision's sampler) and ``random_flip`` (p = 0.5). The view of image ``i`` depends
only on ``(augment, view, seed, i)``, and its fingerprint includes all three, so a view is
encoded and cached like any other image set (:mod:`pyro_clip.features.views` does that).
"""

from __future__ import annotations

import hashlib

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
