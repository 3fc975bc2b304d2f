"""Image-feature cache: one feature row per (backbone, image), stored in atomic shards.

Layout: ``<root>/items-v2/<backbone key>/<shard>.npz`` where the backbone key is a hash of
``backbone.feature_fingerprint()`` (weights, resolved architecture, preprocessing, and the
precision when it is not fp32). A shard holds
``keys`` (the images' :meth:`~pyro_clip.data.base.LabeledImages.item_keys`: pixel hashes for
in-memory sets, relative path + size + mtime for files, or file content with
``PYRO_CLIP_HASH=content``) and one ``feat_<kind>`` array per feature kind, row ``i`` for
``keys[i]``.

``get(backbone, images)`` looks each image's key up in the shards of that backbone; only the
missing ones are decoded and encoded, in chunks of ``chunk_size`` images, each written
atomically as a new shard (named by the hash of its keys) before the next chunk starts, so a
killed extraction keeps every finished chunk. Because rows are found by image key, any two
sets that share images share their features: the few-shot samples of every shot count and
seed, the validation shots, base/new class subsets and the test set. A run therefore encodes
only the images it uses (few-shot train + validation shots + test + evaluation sets), never
a whole training split. Encoding goes through one DataLoader pipeline,
:func:`pyro_clip.features.extraction.iter_features`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from pyro_clip.backbones.base import DualEncoder
from pyro_clip.data.base import LabeledImages
from pyro_clip.errors import DataError
from pyro_clip.features.extraction import iter_features
from pyro_clip.features.lock import locked
from pyro_clip.types import FeatureSet
from pyro_clip.utils.io import save_npz
from pyro_clip.utils.progress import progress_bar

CACHE_FORMAT = 2
_STORE = "items-v2"


def default_cache_dir() -> Path:
    """``$PYRO_CLIP_CACHE`` if set, else ``~/.cache/pyro_clip``."""
    return Path(os.environ.get("PYRO_CLIP_CACHE", Path.home() / ".cache" / "pyro_clip"))


class FeatureCache:
    """Disk cache of image features keyed per image (see module docstring)."""

    def __init__(
        self, root: str | Path | None = None, chunk_size: int = 512, workers: int | None = None
    ) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()
        if chunk_size < 1:
            raise DataError(f"chunk_size must be >= 1, got {chunk_size}")
        self.chunk_size = chunk_size
        #: decoding processes (``None``: :func:`pyro_clip.features.extraction.default_workers`)
        self.workers = workers
        #: per backbone folder: item key -> (shard path, row), and the shards already read
        self._index: dict[Path, dict[str, tuple[Path, int]]] = {}
        self._seen: dict[Path, set[str]] = {}

    def backbone_dir(self, backbone: DualEncoder) -> Path:
        """The folder holding every shard of ``backbone``'s features."""
        h = hashlib.sha256(f"format={CACHE_FORMAT}".encode())
        h.update(backbone.feature_fingerprint().encode())
        return self.root / _STORE / h.hexdigest()[:32]

    def key(self, backbone: DualEncoder, dataset: LabeledImages) -> str:
        """Hash of the backbone and every image key of ``dataset`` (identifies its features)."""
        h = hashlib.sha256(str(self.backbone_dir(backbone)).encode())
        for k in dataset.item_keys():
            h.update(k.encode())
        return h.hexdigest()[:32]

    def _refresh(self, folder: Path) -> dict[str, tuple[Path, int]]:
        """Add the keys of shards written since the last look (by us or another process)."""
        index = self._index.setdefault(folder, {})
        seen = self._seen.setdefault(folder, set())
        if folder.is_dir():
            for shard in sorted(folder.glob("*.npz")):
                if shard.name in seen:
                    continue
                with np.load(shard) as data:
                    for row, k in enumerate(data["keys"].tolist()):
                        index.setdefault(k, (shard, row))
                seen.add(shard.name)
        return index

    def missing(self, backbone: DualEncoder, dataset: LabeledImages) -> list[int]:
        """Indices of the images of ``dataset`` whose features are not cached yet
        (the first image of each distinct key)."""
        index = self._refresh(self.backbone_dir(backbone))
        first: dict[str, int] = {}
        for i, k in enumerate(dataset.item_keys()):
            if k not in index:
                first.setdefault(k, i)
        return list(first.values())

    def get(
        self,
        backbone: DualEncoder,
        dataset: LabeledImages,
        batch_size: int = 64,
        progress: bool = True,
    ) -> FeatureSet:
        """Features of ``dataset`` under ``backbone``: cached rows, encoding only the missing."""
        if len(dataset) == 0:
            raise DataError(f"data set {dataset.name} is empty; nothing to encode")
        folder = self.backbone_dir(backbone)
        todo = self.missing(backbone, dataset)
        if todo:
            with locked(folder):  # concurrent writers: one encodes, the others wait and reuse
                todo = self.missing(backbone, dataset)
                if todo:
                    self._extract(backbone, dataset, todo, folder, batch_size, progress)
        feats = self._gather(folder, dataset.item_keys())
        labels = torch.from_numpy(np.asarray(dataset.labels, dtype=np.int64).copy())
        return FeatureSet(feats, labels, list(dataset.classnames), dataset.name)

    def _extract(
        self,
        backbone: DualEncoder,
        dataset: LabeledImages,
        indices: list[int],
        folder: Path,
        batch_size: int,
        progress: bool,
    ) -> None:
        """Encode ``indices`` of ``dataset``, one atomic shard per chunk of ``chunk_size``.

        One DataLoader (:func:`pyro_clip.features.extraction.iter_features`) serves every chunk, so
        decoding workers start once; it checks the features are finite.
        """
        folder.mkdir(parents=True, exist_ok=True)
        keys = dataset.item_keys()
        indices = np.asarray(indices, dtype=np.int64)
        bar = progress_bar(total=len(indices), desc=f"encoding {dataset.name}", unit="img",
                           enabled=progress)
        chunks = iter_features(backbone, dataset, indices, backbone.runtime, batch_size,
                               self.workers, self.chunk_size, bar)
        for start, feats in zip(range(0, len(indices), self.chunk_size), chunks, strict=True):
            chunk = indices[start:start + self.chunk_size]
            arrays = {f"feat_{kind}": value.numpy() for kind, value in feats.items()}
            chunk_keys = [keys[i] for i in chunk]
            name = hashlib.sha256("".join(chunk_keys).encode()).hexdigest()[:32]
            # float features barely compress; plain npz keeps extraction at raw-forward speed
            save_npz(folder / f"{name}.npz", compress=False,
                     keys=np.asarray(chunk_keys), **arrays)
        bar.close()
        self._refresh(folder)

    def _gather(self, folder: Path, keys: Sequence[str]) -> dict[str, torch.Tensor]:
        """Rows of ``keys`` from the shards, in order -> ``{kind: (N, D) float32}``."""
        index = self._refresh(folder)
        by_shard: dict[Path, list[tuple[int, int]]] = {}
        for out_row, k in enumerate(keys):
            shard, row = index[k]
            by_shard.setdefault(shard, []).append((out_row, row))
        out: dict[str, np.ndarray] = {}
        for shard, pairs in by_shard.items():
            dst = np.fromiter((p[0] for p in pairs), dtype=np.int64, count=len(pairs))
            src = np.fromiter((p[1] for p in pairs), dtype=np.int64, count=len(pairs))
            with np.load(shard) as data:
                for name in data.files:
                    if not name.startswith("feat_"):
                        continue
                    arr = data[name]
                    kind = name[5:]
                    if kind not in out:
                        out[kind] = np.empty((len(keys), *arr.shape[1:]), dtype=arr.dtype)
                    out[kind][dst] = arr[src]
        return {k: torch.from_numpy(v) for k, v in out.items()}
