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

from pyro_clip.errors import ConfigError, DataError


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
    """Parse a JSON file; a damaged one raises a one-line :class:`DataError` naming it."""
    try:
        return json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        where = f" (line {exc.lineno}: {exc.msg})" if isinstance(exc, json.JSONDecodeError) \
            else ""
        raise DataError(f"{path} is damaged: not valid JSON{where}; re-create it by re-running "
                        "the command that wrote it (or remove its folder from the inputs)"
                        ) from exc


def read_yaml(path: str | Path) -> Any:
    """Parse a YAML file; a syntax error raises a one-line :class:`ConfigError` with the file,
    line and column (1-based, as editors count)."""
    import yaml

    path = Path(path)
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{where}: YAML syntax error: {problem}; fix that line "
                          "(mappings are 'key: value', lists '[a, b]')") from exc


def check_out_dir(path: str | Path, flag: str = "--out") -> Path:
    """``path`` as a folder that can be created or used: neither it nor a parent may be a file."""
    path = Path(path)
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                what = "" if p == path else f" (its parent {p} is a file)"
                raise ConfigError(f"{flag} {path} is not a folder{what}; pass a folder path "
                                  "(it is created if missing)")
            break
    return path


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
