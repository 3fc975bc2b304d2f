"""Image-feature extraction through a ``torch.utils.data.DataLoader``.

Worker processes decode and preprocess images (``--workers``; 0 = the main process) while the
device encodes the previous batch; on CUDA batches come from pinned memory with non-blocking
copies, and the backbone runs under :meth:`~pyro_clip.runtime.Runtime.autocast`. Features stay
on the device until a whole chunk is done, then come back to the host once as float32, so the
cache (:mod:`pyro_clip.features.cache`) stores the same numbers whichever device computed them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from pyro_clip.backbones.base import DualEncoder
from pyro_clip.data.base import LabeledImages
from pyro_clip.errors import ConfigError, DataError
from pyro_clip.runtime import Runtime
from pyro_clip.utils.progress import ProgressBar, progress_bar


def default_workers() -> int:
    """Decoding processes when ``--workers`` is not given: ``min(8, cpus - 1)`` (0 on 1 CPU)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(0, min(8, (cpus or 1) - 1))


class PreprocessedImages(Dataset):
    """``images[indices[k]]`` decoded and preprocessed; picklable for worker processes.

    ``transform`` must be picklable under the ``spawn`` start method (open_clip's torchvision
    ``Compose`` is); under ``fork`` (the Linux default) nothing is pickled.
    """

    def __init__(
        self,
        images: LabeledImages,
        indices: Sequence[int] | np.ndarray,
        transform: Callable[[Image.Image], torch.Tensor],
    ) -> None:
        self.images = images
        self.indices = np.asarray(indices, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return int(len(self.indices))

    def __getitem__(self, k: int) -> torch.Tensor:
        return self.transform(self.images.load_image(int(self.indices[k])))


def _loader(
    dataset: PreprocessedImages, runtime: Runtime, batch_size: int, workers: int
) -> Iterator[torch.Tensor]:
    """Batches of preprocessed pixels; a worker's :class:`DataError` (an unreadable image)
    reaches the user as its own one-line message, not wrapped in a worker traceback."""
    extra = {"prefetch_factor": 4, "persistent_workers": False} if workers > 0 else {}
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                        pin_memory=runtime.is_cuda, **extra)
    try:
        yield from loader
    except DataError as exc:
        text, marker = str(exc), "DataError: "
        if workers > 0 and marker in text:  # "Caught DataError in DataLoader worker ..."
            raise DataError(text.rsplit(marker, 1)[1].strip()) from None
        raise


@torch.no_grad()
def iter_features(
    backbone: DualEncoder,
    images: LabeledImages,
    indices: Sequence[int] | np.ndarray,
    runtime: Runtime,
    batch_size: int = 256,
    workers: int | None = None,
    chunk_size: int | None = None,
    progress: bool | ProgressBar = False,
) -> Iterator[dict[str, torch.Tensor]]:
    """Features of ``indices`` in order, yielded ``chunk_size`` rows at a time (float32, CPU).

    One DataLoader serves every chunk (workers start once). Raises :class:`DataError` on
    non-finite features. ``progress``: a progress bar to advance, or whether to show one.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    workers = default_workers() if workers is None else int(workers)
    if workers < 0:
        raise ConfigError(f"workers must be >= 0 (0 = decode in the main process), got {workers}")
    indices = np.asarray(indices, dtype=np.int64)
    chunk_size = chunk_size or max(len(indices), 1)
    bar = progress if isinstance(progress, ProgressBar) else progress_bar(
        total=len(indices), desc=f"encoding {images.name}", unit="img", enabled=bool(progress))
    dataset = PreprocessedImages(images, indices, backbone.image_transform())
    pending: dict[str, list[torch.Tensor]] = {}
    held = 0

    def flush(rows: int) -> dict[str, torch.Tensor]:
        nonlocal pending, held
        out = {}
        for kind, parts in pending.items():
            feats = torch.cat(parts)
            out[kind], rest = feats[:rows], feats[rows:]
            pending[kind] = [rest] if len(rest) else []
        held -= rows
        host = {k: v.float().cpu() for k, v in out.items()}  # one device->host copy per chunk
        for kind, value in host.items():
            if not bool(torch.isfinite(value).all()):
                raise DataError(f"{images.name}: backbone produced non-finite {kind} features")
        return host

    for pixels in _loader(dataset, runtime, batch_size, workers):
        pixels = runtime.to(pixels)
        with runtime.autocast():
            encoded = backbone.encode_images(pixels)
        for kind, value in encoded.items():
            pending.setdefault(kind, []).append(value.float())
        held += pixels.shape[0]
        bar.update(pixels.shape[0])
        while held >= chunk_size:
            yield flush(chunk_size)
    if held:
        yield flush(held)
    if not isinstance(progress, ProgressBar):
        bar.close()


def extract_features(
    backbone: DualEncoder,
    images: LabeledImages,
    indices: Sequence[int] | np.ndarray,
    runtime: Runtime,
    batch_size: int = 256,
    workers: int | None = None,
    progress: bool | ProgressBar = False,
) -> dict[str, torch.Tensor]:
    """Features ``{kind: (len(indices), D)}`` of images ``indices``, in order, float32 on CPU.

    The backbone must already be on ``runtime.device`` (:meth:`DualEncoder.to_runtime`).
    """
    if len(indices) == 0:
        raise DataError(f"{images.name}: no images to encode")
    chunks = list(iter_features(backbone, images, indices, runtime, batch_size, workers,
                                progress=progress))
    return {k: torch.cat([c[k] for c in chunks]) for k in chunks[0]}
