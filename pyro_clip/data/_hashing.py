"""Keys of image files on disk: by path, size and modification time, or by content (opt-in).

Default (``PYRO_CLIP_HASH`` unset or ``stat``): an image's key is sha256 of its path relative
to the data set's folder, its size in bytes and its modification time in nanoseconds. Listing
20,000 files costs one ``stat`` each instead of reading every byte (ImageNet: ~140 GB per
run). A file rewritten in place gets a new mtime and so a new key; a file only touched is
re-encoded once (a safe miss). ``PYRO_CLIP_HASH=content`` keys every image by the sha256 of
its bytes instead (streamed), for file systems whose mtimes cannot be trusted.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pyro_clip.errors import DataError

_CHUNK = 1 << 20
#: environment variable choosing the key of image files: ``stat`` (default) or ``content``
HASH_ENV = "PYRO_CLIP_HASH"
HASH_MODES = ("stat", "content")


def hash_mode() -> str:
    """``$PYRO_CLIP_HASH`` (``stat`` when unset); anything else raises ``DataError``."""
    mode = os.environ.get(HASH_ENV, "stat").strip().lower() or "stat"
    if mode not in HASH_MODES:
        raise DataError(f"{HASH_ENV}={mode!r} is not a key mode; use one of {list(HASH_MODES)}")
    return mode


def file_digest(path: Path) -> bytes:
    """sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.digest()


def file_keys(paths: Sequence[Path], relpaths: Sequence[str], mode: str | None = None) -> list[str]:
    """One hex key per file: sha256 of (relative path, size, mtime_ns), or of the content."""
    mode = mode or hash_mode()
    keys = []
    for path, rel in zip(paths, relpaths, strict=True):
        if mode == "content":
            keys.append(hashlib.sha256(b"content\x00" + file_digest(path)).hexdigest())
        else:
            st = path.stat()
            keys.append(hashlib.sha256(f"{rel}\x00{st.st_size}\x00{st.st_mtime_ns}".encode())
                        .hexdigest())
    return keys


def files_fingerprint(
    keys: Sequence[str],
    relpaths: Sequence[str],
    labels: np.ndarray,
    classnames: Sequence[str],
) -> str:
    """Hex digest over every file's key (:func:`file_keys`), relative path, labels, class names."""
    h = hashlib.sha256()
    for key, rel in zip(keys, relpaths, strict=True):
        h.update(rel.encode())
        h.update(b"\x00")
        h.update(key.encode())
    h.update(np.asarray(labels, dtype=np.int64).tobytes())
    h.update("\x00".join(classnames).encode())
    return h.hexdigest()


def content_groups(paths: Sequence[Path]) -> list[list[int]]:
    """Groups (>= 2 indices, ascending) of files with byte-identical content.

    Only files that share their size with another file are read (sha256 of the bytes): a file
    of unique size has no copy, so a folder of photos is mostly settled by ``stat`` alone.
    """
    stats = [path.stat() for path in paths]
    by_size: dict[int, list[int]] = {}
    for i, st in enumerate(stats):
        by_size.setdefault(st.st_size, []).append(i)
    groups: dict[bytes, list[int]] = {}
    for same_size in by_size.values():
        if len(same_size) < 2:
            continue
        for i in same_size:
            digest = _remembered_digest(str(paths[i]), stats[i].st_size, stats[i].st_mtime_ns)
            groups.setdefault(digest, []).append(i)
    return sorted(sorted(g) for g in groups.values() if len(g) > 1)


@functools.lru_cache(maxsize=1 << 16)
def _remembered_digest(path: str, size: int, mtime_ns: int) -> bytes:
    """:func:`file_digest`, remembered by (path, size, mtime): a folder's files are checked for
    copies twice per run (when splitting, then across the splits)."""
    return file_digest(Path(path))
