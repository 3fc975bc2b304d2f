"""Progress bars: the one home of every bar in the package.

On a terminal, a tqdm bar whose redraws are throttled (``mininterval``) and whose postfix
(e.g. the running loss) is refreshed with the bar, not per step. When stderr is not a terminal
(CI, ``nohup``, a cluster job's log), tqdm's carriage-return redraws would flood the log, so no
bar is drawn: a plain line every ``log_every`` seconds at most for long jobs, and one line when
the job finishes (``desc: done, N steps in T s, <summary>``).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")

#: seconds between terminal redraws
MININTERVAL = 0.5
#: seconds between plain progress lines in a non-interactive log
LOG_EVERY = 60.0


def _interactive(stream: IO[str]) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class ProgressBar:
    """A throttled tqdm bar on a terminal, sparse plain lines otherwise (see module doc)."""

    def __init__(self, total: int | None = None, desc: str = "", unit: str = "it",
                 initial: int = 0, enabled: bool = True, stream: IO[str] | None = None,
                 log_every: float = LOG_EVERY) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.total, self.desc, self.unit = total, desc, unit
        self.enabled = enabled
        self.interactive = enabled and _interactive(self.stream)
        self.n = self._start = initial
        self.log_every = log_every
        self._t0 = self._last_line = time.monotonic()
        self._postfix = ""
        self._closed = False
        self._bar = (tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=False,
                          mininterval=MININTERVAL, file=self.stream, dynamic_ncols=True)
                     if self.interactive else None)

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.enabled and time.monotonic() - self._last_line >= self.log_every:
            self._last_line = time.monotonic()
            self._line(self._count(), with_postfix=True)

    def step(self, n: int = 1, **postfix: float) -> None:
        """``update(n)``; ``postfix`` (e.g. ``loss=0.3``) shows on the next throttled redraw."""
        if postfix:
            self._postfix = ", ".join(f"{k}={v:.4g}" for k, v in postfix.items())
            if self._bar is not None:
                self._bar.set_postfix_str(self._postfix, refresh=False)
        self.update(n)

    def set_postfix_str(self, text: str) -> None:
        self._postfix = text
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=False)

    def write(self, message: str) -> None:
        """A message on its own line (above the bar on a terminal)."""
        if self._bar is not None:
            self._bar.write(message, file=self.stream)
        else:
            print(message, file=self.stream, flush=True)

    def close(self, summary: str = "") -> None:
        """Remove the bar; in a non-interactive log print one line for the finished job."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self.enabled:
            seconds = time.monotonic() - self._t0
            done = f"done, {self._count()} in {seconds:.1f} s"
            self._line(", ".join(p for p in (done, summary) if p), with_postfix=False)

    def _count(self) -> str:
        total = f"/{self.total}" if self.total is not None else ""
        return f"{self.n}{total} {self.unit}"

    def _line(self, text: str, with_postfix: bool) -> None:
        extra = f" ({self._postfix})" if self._postfix and with_postfix else ""
        print(f"{self.desc}: {text}{extra}", file=self.stream, flush=True)

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def progress_bar(total: int | None = None, desc: str = "", unit: str = "it", initial: int = 0,
                 enabled: bool = True, stream: IO[str] | None = None) -> ProgressBar:
    """The package's bar factory (every progress display goes through it)."""
    return ProgressBar(total, desc, unit, initial, enabled, stream)


def track(items: Iterable[T], total: int | None = None, desc: str = "", unit: str = "it",
          enabled: bool = True) -> Iterator[T]:
    """Iterate ``items`` with a :func:`progress_bar` (closed when the loop ends)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with progress_bar(total, desc, unit, enabled=enabled) as bar:
        for item in items:
            yield item
            bar.update(1)
