"""Atomic file writes: write to a temporary file in the same folder, fsync, then ``os.replace``.

A run killed mid-write leaves either the old file or the new one, never a torn file. Files
get the permissions a plain ``open`` would give them, ``0o666 & ~umask`` (``mkstemp`` alone
makes them 0600, unreadable to colleagues on a shared cluster); folders get ``0o777 & ~umask``.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch


def current_umask() -> int:
    """The process umask, read without changing it where ``/proc`` allows (Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # no read-only API elsewhere: set and restore at once
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` and move the result onto ``path`` atomically, mode
    ``0o666 & ~umask``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)  # mkdir already applies the umask
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        os.chmod(tmp_path, 0o666 & ~current_umask())
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()
    return path


def write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    text = json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n"
    return atomic_write(path, lambda p: p.write_text(text))


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def save_npz(path: str | Path, compress: bool = True, **arrays: np.ndarray) -> Path:
    """Write arrays to a ``.npz`` (compressed unless ``compress=False``), atomically."""
    save = np.savez_compressed if compress else np.savez

    def _write(p: Path) -> None:
        with open(p, "wb") as fh:
            save(fh, **arrays)

    return atomic_write(path, _write)


def save_torch(path: str | Path, obj: Any) -> Path:
    """``torch.save`` atomically (checkpoints)."""
    return atomic_write(path, lambda p: torch.save(obj, p))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")
