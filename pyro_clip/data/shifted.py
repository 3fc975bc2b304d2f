"""Fashion-MNIST-C: deterministic corrupted copies of the embedded data for shift evaluation.

In the spirit of ImageNet-C (Hendrycks & Dietterich, ICLR 2019), four corruptions at five
severities with fixed parameters (scaled to 28x28 images):

==============  ================================================  =========================
corruption      operation                                         severity 1 .. 5
==============  ================================================  =========================
rotation        rotate by +-angle (sign drawn per image),         10, 20, 30, 45, 60 degrees
                bilinear, background filled
gaussian_noise  add N(0, sigma^2), sigma a fraction of 255, clip  .08, .12, .18, .26, .38
blur            Gaussian blur, sigma in pixels                    .6, .9, 1.2, 1.6, 2.0
contrast        pull pixels to the image mean: m + c (x - m)      c = .4, .3, .2, .1, .05
==============  ================================================  =========================

Corruptions are applied to the original white-on-black pixels, then ``invert`` (``255 - x``) is
applied as in :func:`~pyro_clip.data.embedded.load_embedded`, so the rotation background is
always the garment's background. Randomness (noise, rotation signs) comes from a numpy
Generator seeded by ``(SEED, corruption, severity, split)``: the same call gives identical
pixels. ``corruption="all"`` returns the split once per corruption, concatenated in the order
of :data:`CORRUPTIONS` (4x the images; labels repeated).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

from pyro_clip.data.arrays import ArrayImages
from pyro_clip.data.embedded import FASHION_MNIST_CLASSNAMES, SPLITS, embedded_arrays
from pyro_clip.errors import DataError

SEED = 1729
SEVERITIES = (1, 2, 3, 4, 5)
ROTATION_DEGREES = (10.0, 20.0, 30.0, 45.0, 60.0)
NOISE_SIGMA = (0.08, 0.12, 0.18, 0.26, 0.38)
BLUR_SIGMA = (0.6, 0.9, 1.2, 1.6, 2.0)
CONTRAST_FACTOR = (0.4, 0.3, 0.2, 0.1, 0.05)


def rotate(images: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Rotate each image by +-``ROTATION_DEGREES[severity-1]`` (random sign), fill with 0."""
    angle = ROTATION_DEGREES[severity - 1]
    signs = rng.choice([-1.0, 1.0], size=len(images))
    out = np.empty_like(images)
    for i, (img, sign) in enumerate(zip(images, signs, strict=True)):
        pil = Image.fromarray(img)
        turned = pil.rotate(sign * angle, resample=Image.Resampling.BILINEAR, fillcolor=0)
        out[i] = np.asarray(turned)
    return out


def gaussian_noise(images: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Add white Gaussian noise with sd ``NOISE_SIGMA[severity-1] * 255``, then clip."""
    sigma = NOISE_SIGMA[severity - 1] * 255.0
    noisy = images.astype(np.float64) + rng.normal(0.0, sigma, size=images.shape)
    return _to_uint8(noisy)


def blur(images: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Gaussian blur with sd ``BLUR_SIGMA[severity-1]`` pixels (edges reflected)."""
    sigma = BLUR_SIGMA[severity - 1]
    blurred = gaussian_filter(images.astype(np.float64), sigma=(0, sigma, sigma), mode="reflect")
    return _to_uint8(blurred)


def contrast(images: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Shrink each image towards its own mean by ``CONTRAST_FACTOR[severity-1]``."""
    c = CONTRAST_FACTOR[severity - 1]
    x = images.astype(np.float64)
    mean = x.mean(axis=(1, 2), keepdims=True)
    return _to_uint8(mean + c * (x - mean))


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


Corruption = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]
#: corruption name -> function(images uint8 (N, H, W), severity, rng) -> corrupted images
CORRUPTIONS: dict[str, Corruption] = {
    "rotation": rotate,
    "gaussian_noise": gaussian_noise,
    "blur": blur,
    "contrast": contrast,
}


def corrupt(images: np.ndarray, corruption: str, severity: int, split: str = "test") -> np.ndarray:
    """Apply one named corruption deterministically (seeded by corruption, severity, split)."""
    if corruption not in CORRUPTIONS:
        raise DataError(f"unknown corruption {corruption!r}; choose one of {[*CORRUPTIONS, 'all']}")
    _check_severity(severity)
    key = [SEED, list(CORRUPTIONS).index(corruption), severity, SPLITS.index(split)]
    rng = np.random.default_rng(key)
    return CORRUPTIONS[corruption](images, severity, rng)


def _check_severity(severity: int) -> None:
    if isinstance(severity, bool) or severity not in SEVERITIES:
        raise DataError(f"severity must be an integer in 1..5, got {severity!r}")


def load_shifted(
    split: str = "test", corruption: str = "mixed", severity: int = 3, invert: bool = True
) -> ArrayImages:
    """A corrupted copy of the embedded Fashion-MNIST split (see the module docstring).

    Args:
        split: ``"train"``, ``"val"`` or ``"test"`` (shift evaluation normally uses test).
        corruption: one of :data:`CORRUPTIONS`, ``"all"`` (every corruption, concatenated) or
            ``"mixed"`` (default: image ``i`` gets corruption ``i mod 4``, so the shifted set has
            the size of the split and each corruption a quarter of every class).
        severity: 1 (mild) .. 5 (severe).
        invert: dark-on-light pixels, as :func:`~pyro_clip.data.embedded.load_embedded`.
    """
    if corruption not in ("all", "mixed") and corruption not in CORRUPTIONS:
        raise DataError(
            f"unknown corruption {corruption!r}; choose one of {[*CORRUPTIONS, 'all', 'mixed']}"
        )
    _check_severity(severity)
    images, labels = embedded_arrays(split)
    names = list(CORRUPTIONS) if corruption == "all" else [corruption]
    if corruption == "mixed":
        names = ["mixed"]
        which = np.arange(len(images)) % len(CORRUPTIONS)
        shifted = images.copy()
        for k, n in enumerate(CORRUPTIONS):
            shifted[which == k] = corrupt(images[which == k], n, severity, split)
    else:
        shifted = np.concatenate([corrupt(images, n, severity, split) for n in names])
    if invert:
        shifted = 255 - shifted
    name = f"fashion-mnist-c/{corruption}-{severity}"
    if split != "test":
        name += f"/{split}"
    return ArrayImages(
        shifted,
        np.tile(labels, len(names)),
        FASHION_MNIST_CLASSNAMES,
        name=name,
        tag=f"fashion-mnist-c {corruption} severity={severity} invert={int(invert)}",
    )
