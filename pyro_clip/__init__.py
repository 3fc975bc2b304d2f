"""pyro-clip: Bayesian few-shot adaptation of CLIP-style dual encoders with Pyro.

>>> import pyro_clip as pc
>>> sorted(pc.__all__)[:3]
['EvaluationResult', 'Features', 'FittedModel']

The names of :mod:`pyro_clip.api` are loaded on first use, so importing a submodule
(``pyro_clip.cli``) does not import the whole library.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

__all__ = [
    "EvaluationResult",
    "Features",
    "FittedModel",
    "encode",
    "evaluate",
    "fit",
    "load_backbone",
    "load_dataset",
    "load_run",
    "report",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        value = getattr(importlib.import_module("pyro_clip.api"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'pyro_clip' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
