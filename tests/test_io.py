"""Atomic writes: content, no temporary left behind, and umask-implied permissions."""

import os
import stat

import numpy as np
import pytest
import torch

from pyro_clip.utils.io import (
    atomic_write,
    current_umask,
    read_json,
    save_npz,
    save_torch,
    write_json,
)


@pytest.fixture
def umask():
    """Set a umask for the test and restore the previous one afterwards."""
    old = os.umask(0o022)
    os.umask(old)

    def _set(mask: int) -> None:
        os.umask(mask)

    yield _set
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077, 0o002])
def test_written_files_and_folders_follow_the_umask(tmp_path, umask, mask):
    umask(mask)
    assert current_umask() == mask
    out = tmp_path / "run" / "sub"
    paths = [write_json(out / "a.json", {"x": 1}),
             save_npz(out / "b.npz", x=np.arange(3)),
             save_torch(out / "c.pt", {"w": torch.ones(2)})]
    for p in paths:
        assert _mode(p) == 0o666 & ~mask, (p, oct(_mode(p)))
    assert _mode(out) == 0o777 & ~mask
    assert _mode(tmp_path / "run") == 0o777 & ~mask
    # and what a plain open() would give, the reference the issue asks for
    (out / "plain").write_text("x")
    assert _mode(out / "plain") == _mode(paths[0])


def test_atomic_write_replaces_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "m.json"
    write_json(target, {"v": 1})
    write_json(target, {"v": 2})
    assert read_json(target) == {"v": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]


def test_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "m.json"
    write_json(target, {"v": 1})

    def boom(p):
        p.write_text("partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, boom)
    assert read_json(target) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]
