"""Content fingerprints for image files on disk (streamed sha256)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

_CHUNK = 1 << 20


def file_digest(path: Path) -> bytes:
    """sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.digest()


def files_fingerprint(
    paths: Sequence[Path],
    relpaths: Sequence[str],
    labels: np.ndarray,
    classnames: Sequence[str],
) -> str:
    """Hex digest over every file's content, its relative path, the labels and class names."""
    h = hashlib.sha256()
    for path, rel in zip(paths, relpaths, strict=True):
        h.update(rel.encode())
        h.update(b"\x00")
        h.update(file_digest(path))
    h.update(np.asarray(labels, dtype=np.int64).tobytes())
    h.update("\x00".join(classnames).encode())
    return h.hexdigest()
