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
from tqdm.auto import tqdm

from pyro_clip.backbones.base import DualEncoder
from pyro_clip.cache_lock import locked
from pyro_clip.data.base import LabeledImages
from pyro_clip.errors import DataError
from pyro_clip.io import save_npz

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

    def __init__(self, root: str | Path | None = None, chunk_size: int = 512) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()
        self.chunk_size = chunk_size

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
        bar = tqdm(total=n, desc=f"encoding {dataset.name}", unit="img", disable=not progress)
        for start in starts:
            stop = min(start + self.chunk_size, n)
            part = parts_dir / f"{start:09d}.npz"
            if not part.exists():
                feats = encode_range(backbone, dataset, start, stop, batch_size, bar)
                save_npz(part, compress=False, **{f"feat_{k}": v for k, v in feats.items()})
            else:
                bar.update(stop - start)
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


@torch.no_grad()
def encode_range(
    backbone: DualEncoder,
    dataset: LabeledImages,
    start: int,
    stop: int,
    batch_size: int,
    bar: tqdm | None = None,
) -> dict[str, np.ndarray]:
    """Preprocess and encode images ``start..stop-1`` -> float32 arrays per feature kind."""
    out: dict[str, list[np.ndarray]] = {}
    for b0 in range(start, stop, batch_size):
        b1 = min(b0 + batch_size, stop)
        pixels = torch.stack([backbone.preprocess(dataset.load_image(i)) for i in range(b0, b1)])
        for kind, value in backbone.encode_images(pixels).items():
            arr = value.float().cpu().numpy()
            if not np.isfinite(arr).all():
                raise DataError(f"{dataset.name}: backbone produced non-finite features")
            out.setdefault(kind, []).append(arr)
        if bar is not None:
            bar.update(b1 - b0)
    return {k: np.concatenate(v) for k, v in out.items()}
