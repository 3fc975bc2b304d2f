"""Test helper: kill the worker processes of suite runs in progress (tests/test_suite_*.py)."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path


class Killer(threading.Thread):
    """SIGKILLs the worker process of the first runs it sees in progress (up to ``times``).

    A run in progress is a hidden ``.seed<S>.tmp-*`` folder whose ``run.log`` names the pid.
    """

    def __init__(self, root: Path, times: int = 2) -> None:
        super().__init__(daemon=True)
        self.root, self.times = root, times
        self.killed: list[tuple[int, Path]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        seen: set[Path] = set()
        while not self.stop.is_set() and len(self.killed) < self.times:
            for log in self.root.glob("**/.seed*.tmp-*/run.log"):
                if log in seen:
                    continue
                seen.add(log)
                text = log.read_text().split()
                if "pid" not in text:
                    continue
                pid = int(text[text.index("pid") + 1].rstrip(","))
                if pid == os.getpid():
                    continue
                final = log.parent.parent / log.parent.name.split(".tmp-")[0].lstrip(".")
                if any(final == f for _, f in self.killed):
                    continue  # one kill per run: its retry must be allowed to finish
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    continue
                self.killed.append((pid, final))
                break
            time.sleep(0.02)
