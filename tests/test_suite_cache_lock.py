"""The feature cache under concurrent writers: two processes race for one entry."""

from __future__ import annotations

import multiprocessing as mp
import time
from pathlib import Path

import numpy as np
import pytest

from pyro_clip.features.lock import entry_lock, locked
from tests.conftest import TINY

HOLD_SECONDS = 1.0


def _encode_in_child(root: str, calls: str, barrier, queue) -> None:
    """Child process: wait at the barrier, then ask the cache for the same entry as the other.

    ``_extract`` is wrapped (not replaced): it records the call and then keeps encoding for
    ``HOLD_SECONDS`` more, so the other process surely asks while this one is encoding.
    """
    import pyro_clip.features.cache as features
    from pyro_clip.data import load_dataset
    from pyro_clip.pipeline.run import get_backbone

    real = features.FeatureCache._extract

    def recorded(self, *args, **kwargs):
        with open(calls, "a") as fh:
            fh.write("encode\n")
        time.sleep(HOLD_SECONDS)
        return real(self, *args, **kwargs)

    features.FeatureCache._extract = recorded
    backbone = get_backbone(TINY)
    images = load_dataset("fashion-mnist", "test")
    barrier.wait(timeout=120)
    got = features.FeatureCache(root).get(backbone, images, progress=False)
    queue.put({k: v.numpy() for k, v in got.features.items()})


def _race(tmp_path: Path) -> tuple[int, list[dict[str, np.ndarray]]]:
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(2), ctx.Queue()
    calls = tmp_path / "calls.txt"
    procs = [ctx.Process(target=_encode_in_child,
                         args=(str(tmp_path / "cache"), str(calls), barrier, queue))
             for _ in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    n_encodes = len(calls.read_text().splitlines()) if calls.exists() else 0
    return n_encodes, results


def test_two_processes_asking_for_one_entry_encode_it_once(tmp_path):
    """Without the lock this race encoded twice, and one process crashed with
    FileNotFoundError on a ``.parts`` chunk the other had just merged and deleted (seen
    with the whole-split cache, lock taken out); with it, one encodes, the other reads."""
    n_encodes, (a, b) = _race(tmp_path)
    assert n_encodes == 1  # one encoded; the other waited on the lock and read the file
    assert a.keys() == b.keys() and a
    for kind in a:
        np.testing.assert_array_equal(a[kind], b[kind])


def test_lock_is_exclusive_between_holders_and_released_after(tmp_path):
    target = tmp_path / "entry.npz"
    with locked(target):
        other = entry_lock(target)
        with pytest.raises(TimeoutError):  # filelock.Timeout subclasses TimeoutError
            other.acquire(timeout=0.05)
    other.acquire(timeout=0.05)  # free again once the first holder left
    other.release()


def test_soft_lock_is_used_when_asked(tmp_path, monkeypatch):
    from filelock import SoftFileLock

    monkeypatch.setenv("PYRO_CLIP_SOFT_LOCK", "1")
    assert isinstance(entry_lock(tmp_path / "x.npz"), SoftFileLock)
