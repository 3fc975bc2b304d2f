"""Backbones, data sets and features for the Python API: the CLI's ``--backbone`` and
``--dataset`` specs, and one call from images to cached :class:`~pyro_clip.types.FeatureSet`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pyro_clip.backbones.base import DualEncoder
from pyro_clip.data import LabeledImages, SubsetImages, known_datasets, sample_few_shot
from pyro_clip.data import load_dataset as _load_split
from pyro_clip.errors import DataError
from pyro_clip.features.cache import FeatureCache
from pyro_clip.pipeline.run import get_backbone
from pyro_clip.runtime import Runtime
from pyro_clip.types import FeatureSet


def load_backbone(spec: str = "conse", *, device: str = "auto",
                  precision: str = "fp32") -> DualEncoder:
    """The dual encoder named by ``spec``, as ``pyro-clip fit --backbone`` takes it.

    ``"conse"`` (offline default) or ``"open_clip:<model>[:<tag or checkpoint>]"``;
    ``device`` ``auto | cpu | cuda | cuda:N``, ``precision`` ``fp32 | bf16 | fp16`` (backbone
    forwards under autocast). Weights are built once per process and device and shared:
    another call with another precision returns another view and never changes this one.

    >>> import pyro_clip as pc
    >>> backbone = pc.load_backbone("open_clip:pyro-clip-tiny", device="cpu")
    >>> backbone.runtime.precision, backbone.embed_dim
    ('fp32', 64)
    """
    return get_backbone(spec, Runtime.resolve(device, precision))


def load_dataset(name: str, split: str = "train", root: str | Path | None = None, *,
                 shots: int | None = None, seed: int = 1, **kwargs: Any) -> LabeledImages:
    """One split of a data set, as ``pyro-clip fit --dataset`` takes it (``pyro-clip list
    datasets``; ``"folder"`` with ``root=<folder>``; the CoOp/Dassl sets with ``root``).

    ``shots``: keep K images per class, drawn by ``seed`` as a run draws its few-shot
    training sample (Dassl convention, :func:`~pyro_clip.data.sample_few_shot`), so the same
    ``shots`` and ``seed`` give the CLI's training images. ``kwargs`` go to the data set
    (``corruption``/``severity`` for ``fashion-mnist-c``, ``skip_corrupt``, ...).

    >>> import pyro_clip as pc
    >>> train = pc.load_dataset("fashion-mnist", "train", shots=2, seed=1)
    >>> len(train), train.classnames[:2]
    (20, ['t-shirt', 'trousers'])
    """
    images = _load_split(name, split, root=root, **kwargs)
    if shots is None:
        return images
    idx = sample_few_shot(images.labels, shots, seed)
    return SubsetImages(images, idx, name=f"{images.name}/{shots}shot-seed{seed}")


def dataset_name(images: LabeledImages | None) -> str | None:
    """The registry name of the data set ``images`` was loaded from, or None if unknown
    (read from its name, e.g. ``fashion-mnist/train/4shot-seed1`` -> ``fashion-mnist``)."""
    if images is None:
        return None
    head = str(getattr(images, "name", "")).split("/", 1)[0]
    return head if head in known_datasets() else None


def encode(backbone: DualEncoder, images: LabeledImages, *, cache_dir: str | Path | None = None,
           batch_size: int = 64, workers: int | None = None,
           progress: bool = False) -> FeatureSet:
    """Image features of ``images`` under ``backbone`` -> :class:`pyro_clip.Features`.

    Rows come from the per-image feature cache (``$PYRO_CLIP_CACHE``, default
    ``~/.cache/pyro_clip``, or ``cache_dir``); only uncached images are encoded, and every
    later call, run or CLI command reuses them. The result keeps ``images`` (``.images``)
    for methods that encode augmented views or train the image encoder.

    >>> import pyro_clip as pc
    >>> backbone = pc.load_backbone("open_clip:pyro-clip-tiny", device="cpu")
    >>> feats = pc.encode(backbone, pc.load_dataset("fashion-mnist", "val", shots=1))
    >>> feats.x.shape, feats.y.shape
    (torch.Size([10, 64]), torch.Size([10]))
    """
    if not isinstance(images, LabeledImages):
        raise DataError(f"encode takes labelled images (pyro_clip.load_dataset), got "
                        f"{type(images).__name__}; build Features from tensors with "
                        "pyro_clip.Features(x, y, classnames)")
    cache = FeatureCache(cache_dir, workers=workers)
    feats = cache.get(backbone, images, batch_size=batch_size, progress=progress)
    feats.images = images
    return feats


def empty_like(data: FeatureSet) -> FeatureSet:
    """No rows, the same feature kinds, classes and text (a run without validation data)."""
    return data.subset(np.zeros(0, dtype=np.int64))
