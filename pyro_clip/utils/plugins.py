"""Plug-in discovery for the registries (methods, covariance structures, data sets, backbones).

A plug-in is a module that registers its class on import; a registry calls
:func:`import_plugins` before it is read, so a new plug-in is one new file in its package.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil


@functools.cache
def import_plugins(package: str) -> None:
    """Import every public module of ``package`` once (names starting with ``_`` are helpers,
    not plug-ins)."""
    module = importlib.import_module(package)
    for info in pkgutil.iter_modules(module.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package}.{info.name}")
