"""Keep third-party noise off a user's terminal; pyro-clip's own warnings still show.

A warning is *ours* when the code that called ``warnings.warn`` lives in the ``pyro_clip``
package (whatever frame ``stacklevel`` attributes it to); every other warning (torch.jit's
``FutureWarning``, laplace-torch's ``link_approx`` note, ...) is dropped. The loggers of
libraries that log retries and downloads (Hugging Face Hub, urllib3, ...) are raised to
``ERROR``. ``pyro-clip --verbose`` leaves everything as Python would.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pyro_clip

PACKAGE_DIR = Path(pyro_clip.__file__).resolve().parent
_WARNINGS_FILE = Path(warnings.__file__).resolve()
#: loggers of libraries whose INFO/WARNING chatter (retries, downloads) is not for users
NOISY_LOGGERS = ("huggingface_hub", "urllib3", "filelock", "timm", "open_clip",
                 "sentence_transformers", "transformers", "laplace", "torch")


def issued_by_us(frame: FrameType | None) -> bool:
    """True when the first frame outside :mod:`warnings` (the caller of ``warnings.warn``)
    belongs to a module of the ``pyro_clip`` package."""
    while frame is not None and Path(frame.f_code.co_filename).resolve() == _WARNINGS_FILE:
        frame = frame.f_back
    if frame is None:
        return False
    return Path(frame.f_code.co_filename).resolve().is_relative_to(PACKAGE_DIR)


@contextlib.contextmanager
def third_party_quiet(enabled: bool = True) -> Iterator[None]:
    """Within the block, show only pyro-clip's warnings and silence noisy loggers below
    ``ERROR``; restores ``warnings.showwarning`` and the logger levels on exit."""
    if not enabled:
        yield
        return
    shown = warnings.showwarning

    def show(message: Any, category: type[Warning], filename: str, lineno: int,
             file: Any = None, line: str | None = None) -> None:
        if issued_by_us(sys._getframe(1)):
            shown(message, category, filename, lineno, file, line)

    levels = {name: logging.getLogger(name).level for name in NOISY_LOGGERS}
    warnings.showwarning = show
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        yield
    finally:
        warnings.showwarning = shown
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
