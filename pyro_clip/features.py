"""Image-feature cache: each (backbone, data set) is encoded once and served from disk after.

The key is a hash of the backbone fingerprint (weights + preprocessing) and the data set's
content fingerprint. Features are computed in chunks that are each written atomically, so a
killed extraction resumes at the first missing chunk; the finished file replaces the chunks.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pyro_clip.backbones.base import DualEncoder
from pyro_clip.cache_lock import locked
from pyro_clip.data.base import LabeledImages
from pyro_clip.errors import DataError
from pyro_clip.extraction import extract_features, iter_features
from pyro_clip.io import save_npz
from pyro_clip.progress import ProgressBar, progress_bar

CACHE_FORMAT = 1


def default_cache_dir() -> Path:
    """``$PYRO_CLIP_CACHE`` if set, else ``~/.cache/pyro_clip``."""
    return Path(os.environ.get("PYRO_CLIP_CACHE", Path.home() / ".cache" / "pyro_clip"))


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


class FeatureCache:
    """Disk cache of image features (see module docstring)."""

    def __init__(
        self, root: str | Path | None = None, chunk_size: int = 512, workers: int | None = None
    ) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()
        self.chunk_size = chunk_size
        #: decoding processes (``None``: :func:`pyro_clip.extraction.default_workers`)
        self.workers = workers

    def key(self, backbone: DualEncoder, dataset: LabeledImages) -> str:
        h = hashlib.sha256(f"format={CACHE_FORMAT}".encode())
        h.update(backbone.fingerprint().encode())
        h.update(dataset.fingerprint().encode())
        return h.hexdigest()[:32]

    def path(self, backbone: DualEncoder, dataset: LabeledImages) -> Path:
        return self.root / f"{self.key(backbone, dataset)}.npz"

    def get(
        self,
        backbone: DualEncoder,
        dataset: LabeledImages,
        batch_size: int = 64,
        progress: bool = True,
    ) -> FeatureSet:
        """Features of ``dataset`` under ``backbone``, computed on a miss, read on a hit."""
        path = self.path(backbone, dataset)
        if not path.exists():
            with locked(path):  # concurrent writers: one encodes, the others wait and reuse
                if not path.exists():
                    self._extract(backbone, dataset, path, batch_size, progress)
        with np.load(path) as data:
            feats = {k[5:]: torch.from_numpy(data[k]) for k in data.files if k.startswith("feat_")}
            labels = torch.from_numpy(data["labels"])
        return FeatureSet(feats, labels, list(dataset.classnames), dataset.name)

    def _extract(
        self,
        backbone: DualEncoder,
        dataset: LabeledImages,
        path: Path,
        batch_size: int,
        progress: bool,
    ) -> None:
        parts_dir = path.with_suffix(".parts")
        parts_dir.mkdir(parents=True, exist_ok=True)
        n = len(dataset)
        if n == 0:
            raise DataError(f"data set {dataset.name} is empty; nothing to encode")
        starts = range(0, n, self.chunk_size)
        bar = progress_bar(total=n, desc=f"encoding {dataset.name}", unit="img", enabled=progress)
        missing = [s for s in starts if not (parts_dir / f"{s:09d}.npz").exists()]
        bar.update(n - sum(min(s + self.chunk_size, n) - s for s in missing))
        # one DataLoader over every missing chunk (workers start once); the k-th chunk it
        # yields is missing[k] since only the last chunk of the set can be short
        indices = np.concatenate([np.arange(s, min(s + self.chunk_size, n)) for s in missing]
                                 or [np.zeros(0, dtype=np.int64)])
        chunks = iter_features(backbone, dataset, indices, backbone.runtime, batch_size,
                               self.workers, self.chunk_size, bar) if missing else iter(())
        for start, feats in zip(missing, chunks, strict=True):
            save_npz(parts_dir / f"{start:09d}.npz", compress=False,
                     **{f"feat_{k}": v.numpy() for k, v in feats.items()})
        bar.close()
        chunks = []
        for start in starts:
            with np.load(parts_dir / f"{start:09d}.npz") as data:
                chunks.append({k: data[k] for k in data.files})
        merged = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
        # float features barely compress; plain npz keeps extraction at raw-forward speed
        save_npz(path, compress=False, labels=np.asarray(dataset.labels, dtype=np.int64),
                 **merged)
        shutil.rmtree(parts_dir, ignore_errors=True)


def encode_range(
    backbone: DualEncoder,
    dataset: LabeledImages,
    start: int,
    stop: int,
    batch_size: int,
    bar: ProgressBar | None = None,
    workers: int | None = 0,
) -> dict[str, np.ndarray]:
    """Preprocess and encode images ``start..stop-1`` -> float32 arrays per feature kind."""
    feats = extract_features(backbone, dataset, np.arange(start, stop), backbone.runtime,
                             batch_size, workers, bar if bar is not None else False)
    return {k: v.numpy() for k, v in feats.items()}
