"""Inter-process lock for one cache entry, so concurrent writers encode it once.

Uses ``filelock`` (a well-kept library; ``fcntl.flock`` on POSIX): the kernel releases the
lock when its holder dies, so a killed encoder never leaves a stale lock, and the next
process resumes the entry's written chunks. On a file system without working ``flock``
(some NFS set-ups) set ``PYRO_CLIP_SOFT_LOCK=1`` for a lock file that exists while held
(a crashed holder then leaves it behind: delete the ``.lock`` file by hand).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import BaseFileLock, FileLock, SoftFileLock, Timeout

log = logging.getLogger(__name__)


def entry_lock(path: str | Path) -> BaseFileLock:
    """The lock guarding cache entry ``path`` (the file ``<path>.lock`` beside it)."""
    lock_path = f"{path}.lock"
    Path(lock_path).parent.mkdir(parents=True, exist_ok=True)
    soft = os.environ.get("PYRO_CLIP_SOFT_LOCK", "") not in ("", "0")
    return SoftFileLock(lock_path) if soft else FileLock(lock_path)


@contextmanager
def locked(path: str | Path, poll_message_after: float = 1.0) -> Iterator[None]:
    """Hold ``path``'s lock; says once (logging) that it waits when another process holds it."""
    lock = entry_lock(path)
    try:
        lock.acquire(timeout=poll_message_after)
    except Timeout:
        log.warning("waiting for another process that is encoding %s", path)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()
