"""Executor registry: a new executor (e.g. SLURM) is one module plus one line in EXECUTORS.

Entries are ``"module:Class"`` strings so that an optional dependency (Ray) is imported only
when its executor is chosen.
"""

from __future__ import annotations

import importlib

from pyro_clip.errors import ConfigError

EXECUTORS: dict[str, str] = {
    "local": "pyro_clip.suite.executors.local:LocalExecutor",
    "ray": "pyro_clip.suite.executors.ray:RayExecutor",
}


def check_executor_name(name: str, source: str = "--executor") -> None:
    if name not in EXECUTORS:
        raise ConfigError(f"{source}: unknown executor {name!r}; choose from {list(EXECUTORS)}")


def get_executor_class(name: str) -> type:
    """The executor class registered as ``name`` (imports its module)."""
    check_executor_name(name)
    module, cls = EXECUTORS[name].split(":")
    return getattr(importlib.import_module(module), cls)
