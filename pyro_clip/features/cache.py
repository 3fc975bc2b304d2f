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

Damage: a shard that cannot be read (cut short, overwritten, a bad zip CRC), whose feature
arrays are shorter than its key list, or that holds a non-finite feature is reported with its
path (``UserWarning``), deleted, and its images are encoded again; the other shards, and so
every other data set, are unaffected.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import warnings
import zipfile
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
#: what reading a damaged ``.npz`` raises: a torn or overwritten zip, random bytes that
#: ``np.load`` takes for a pickle, a member whose CRC or length does not match
_READ_ERRORS = (OSError, ValueError, KeyError, EOFError, IndexError, zipfile.BadZipFile,
                pickle.UnpicklingError)
#: how often ``get`` re-encodes images of shards found damaged before giving up
_MAX_REPAIRS = 3


class _ShardGone(Exception):
    """A shard the index points to was damaged (and dropped) or removed by another process."""


def _stat_id(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def _read_keys(shard: Path) -> list[str]:
    # our own handle: np.load leaves the file it opened unclosed when the zip is damaged
    with open(shard, "rb") as fh, np.load(fh) as data:
        keys = data["keys"]
    if keys.ndim != 1 or keys.dtype.kind != "U":
        raise ValueError(f"keys are {keys.dtype} {keys.shape}, not a list of strings")
    return keys.tolist()


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
                before = _stat_id(shard)
                try:
                    keys = _read_keys(shard)
                except FileNotFoundError:  # dropped by another process meanwhile
                    continue
                except _READ_ERRORS as exc:
                    self._drop(shard, before, f"unreadable: {type(exc).__name__}: {exc}")
                    continue
                for row, k in enumerate(keys):
                    index.setdefault(k, (shard, row))
                seen.add(shard.name)
        return index

    def _forget(self, shard: Path) -> None:
        """Take ``shard`` out of the in-memory index (its keys count as missing again)."""
        index = self._index.get(shard.parent, {})
        for k in [k for k, (path, _) in index.items() if path == shard]:
            del index[k]
        self._seen.get(shard.parent, set()).discard(shard.name)

    def _drop(self, shard: Path, seen_as: tuple[int, int, int] | None, why: str) -> None:
        """Report a damaged shard with its path and delete it, unless another process has
        replaced it since it was read (``seen_as``: its inode, size and mtime then)."""
        self._forget(shard)
        if seen_as is not None and _stat_id(shard) == seen_as:
            shard.unlink(missing_ok=True)
        warnings.warn(
            f"feature cache shard {shard} is damaged ({why}); it was deleted and its images "
            "are encoded again",
            stacklevel=2,
        )

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
        for _ in range(_MAX_REPAIRS + 1):
            todo = self.missing(backbone, dataset)
            if todo:
                with locked(folder):  # concurrent writers: one encodes, the others reuse
                    todo = self.missing(backbone, dataset)
                    if todo:
                        self._extract(backbone, dataset, todo, folder, batch_size, progress)
            try:
                feats = self._gather(folder, dataset.item_keys())
                break
            except _ShardGone:  # dropped: the next pass encodes its images again
                continue
        else:
            raise DataError(
                f"features of {dataset.name} in {folder} were damaged again after "
                f"{_MAX_REPAIRS} re-encodings; check the disk, or delete {folder}"
            )
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
        """Rows of ``keys`` from the shards, in order -> ``{kind: (N, D) float32}``; raises
        ``_ShardGone`` after dropping every damaged shard among them."""
        index = self._refresh(folder)
        by_shard: dict[Path, list[tuple[int, int]]] = {}
        for out_row, k in enumerate(keys):
            shard, row = index[k]
            by_shard.setdefault(shard, []).append((out_row, row))
        out: dict[str, np.ndarray] = {}
        gone: list[str] = []
        for shard, pairs in by_shard.items():
            dst = np.fromiter((p[0] for p in pairs), dtype=np.int64, count=len(pairs))
            src = np.fromiter((p[1] for p in pairs), dtype=np.int64, count=len(pairs))
            try:
                arrays = self._read_features(shard)
            except _ShardGone as exc:  # check the other shards too: all are re-encoded at once
                gone.append(str(exc))
                continue
            for kind, arr in arrays.items():
                if kind not in out:
                    out[kind] = np.empty((len(keys), *arr.shape[1:]), dtype=arr.dtype)
                out[kind][dst] = arr[src]
        if gone:
            raise _ShardGone(", ".join(gone))
        return {k: torch.from_numpy(v) for k, v in out.items()}

    def _read_features(self, shard: Path) -> dict[str, np.ndarray]:
        """``{kind: rows}`` of one shard, checked: readable, one finite row per key.

        A damaged shard is dropped (:meth:`_drop`) and ``_ShardGone`` raised."""
        before = _stat_id(shard)
        try:
            with open(shard, "rb") as fh, np.load(fh) as data:
                n_keys = len(data["keys"])
                arrays = {name[5:]: data[name] for name in data.files
                          if name.startswith("feat_")}
        except FileNotFoundError as exc:  # dropped by another process
            self._forget(shard)
            raise _ShardGone(str(shard)) from exc
        except _READ_ERRORS as exc:
            self._drop(shard, before, f"unreadable: {type(exc).__name__}: {exc}")
            raise _ShardGone(str(shard)) from exc
        why = None
        if not arrays:
            why = "no feature arrays"
        for kind, arr in arrays.items():
            if arr.ndim < 1 or arr.shape[0] != n_keys:
                why = f"{kind} holds {arr.shape[:1]} rows for {n_keys} keys"
            elif arr.dtype.kind != "f" or not np.isfinite(arr).all():
                why = f"{kind} has non-finite values"
        if why is not None:
            self._drop(shard, before, why)
            raise _ShardGone(str(shard))
        return arrays
