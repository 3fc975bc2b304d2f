"""Run folders: a fresh folder per run, ``runs/latest`` pointing at the newest, and no finished
run overwritten by accident.

A run folder is *finished* once it holds ``metrics.json`` (the suite's resume uses the same
test). ``runs/latest`` is a symbolic link replaced atomically (a new link is made under a
temporary name, then renamed over the old one), so a reader never sees it missing.
"""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

from pyro_clip.errors import ConfigError
from pyro_clip.utils.io import check_out_dir

#: where ``pyro-clip fit`` puts runs without ``--out``
RUNS_ROOT = Path("runs")
LATEST = "latest"


def is_finished(out: str | Path) -> bool:
    """True when ``out`` holds a finished run (its ``metrics.json``)."""
    return (Path(out) / "metrics.json").is_file()


def run_dir_name(method: str, dataset: str, shots: int, seed: int) -> str:
    """``<method>-<dataset>-<shots>shot-s<seed>``, with characters unsafe in a folder name
    (``/``, ``:``, spaces) replaced by ``_``."""
    name = f"{method}-{dataset}-{shots}shot-s{seed}"
    return re.sub(r"[^\w.+-]", "_", name)


def fresh_run_dir(name: str, root: str | Path = RUNS_ROOT) -> Path:
    """``root/name``, or ``root/name-2``, ``-3``, ... when taken; created empty (``mkdir`` is
    atomic, so two runs started together never share a folder)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(1, 100_000):
        path = root / (name if i == 1 else f"{name}-{i}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise ConfigError(f"no free run folder named {name}-N under {root}; pass --out")


def point_latest(target: str | Path, root: str | Path = RUNS_ROOT) -> Path:
    """Make ``root/latest`` a relative symbolic link to ``target`` (atomically replaced).

    A real folder named ``latest`` (written by an older version) is left alone: returns its
    path without touching it.
    """
    root = Path(root)
    link = root / LATEST
    if link.exists() and not link.is_symlink():
        return link
    tmp = root / f".{LATEST}.{uuid.uuid4().hex}"
    os.symlink(os.path.relpath(Path(target).resolve(), root.resolve()), tmp)
    os.replace(tmp, link)
    return link


def check_overwrite(out: str | Path, overwrite: bool) -> None:
    """Refuse a finished run folder as an output folder unless ``overwrite`` (a file there, or
    as a parent, is refused by :func:`~pyro_clip.utils.io.check_out_dir`)."""
    out = check_out_dir(out)
    if is_finished(out) and not overwrite:
        raise ConfigError(
            f"--out {out} holds a finished run (metrics.json); pass --overwrite to replace it, "
            "or leave --out out for a fresh folder under runs/"
        )
