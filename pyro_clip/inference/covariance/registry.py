"""The ``covariance=`` registry: names, memory estimates, the size-based default, construction.

A structure is one module of this package whose :class:`Covariance` subclass carries
:func:`register_covariance`; every module of the package is imported the first time the
registry is asked for a structure, so nothing here names a structure.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, TypeVar

from pyro_clip.errors import ConfigError
from pyro_clip.inference.covariance.base import Covariance
from pyro_clip.utils.plugins import import_plugins

#: state larger than this is refused before allocating (``max_state_gib`` overrides it)
MAX_STATE_GIB = 8.0
#: ``covariance=auto``: the largest state a structure may take to be chosen; a fit holds a
#: few copies of it at its peak (the best and the current prior-variance state, a Cholesky
#: factor when sampling), so this keeps the default fit within a few GiB
AUTO_STATE_GIB = 0.5

_STRUCTURES: dict[str, type[Covariance]] = {}

C = TypeVar("C", bound=type[Covariance])


def register_covariance(cls: C) -> C:
    """Class decorator: make ``cls`` available as ``covariance=<cls.kind>``."""
    kind = cls.__dict__.get("kind")
    if not isinstance(kind, str) or not kind:
        raise TypeError(f"{cls.__name__} needs a class attribute kind = '<name>' to register")
    other = _STRUCTURES.get(kind)
    if other is not None and other.__qualname__ != cls.__qualname__:
        raise TypeError(f"covariance {kind!r} is registered twice ({other.__name__}, "
                        f"{cls.__name__}); give one of them another kind")
    _STRUCTURES[kind] = cls
    return cls


def structures() -> dict[str, type[Covariance]]:
    """Every registered structure by name, in listing order (``Covariance.order``)."""
    import_plugins("pyro_clip.inference.covariance")
    return dict(sorted(_STRUCTURES.items(), key=lambda item: (item[1].order, item[0])))


def structure(kind: str) -> type[Covariance]:
    """The structure class named ``kind``; unknown names fail with the list of valid ones."""
    found = structures().get(kind)
    if found is None:
        raise ConfigError(
            f"unknown covariance {kind!r}; choose one of {', '.join(structures())}")
    return found


def __getattr__(name: str) -> Any:
    """``COVARIANCES``: the registered names in listing order (computed on first use)."""
    if name == "COVARIANCES":
        return tuple(structures())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def estimate_bytes(kind: str, n: int, n_blocks: int = 1, rank: int = 10) -> int:
    """float64 bytes the structure's state will take, computed before allocating it."""
    return structure(kind).estimate_bytes(n, n_blocks, rank)


def _check_memory(kind: str, n: int, n_blocks: int, rank: int, max_gib: float) -> None:
    need = estimate_bytes(kind, n, n_blocks, rank)
    if need <= max_gib * 2**30:
        return
    fits = [k for k in reversed(structures())  # the later-listed, more scalable ones first
            if k != kind and estimate_bytes(k, n, n_blocks, rank) <= max_gib * 2**30]
    raise ConfigError(
        f"covariance={kind} for {n} parameters needs {need / 2**30:.1f} GiB "
        f"({need} bytes), more than the {max_gib:g} GiB limit; use covariance="
        + "|".join(fits or ["diag"]) + " (or raise --opt max_state_gib=...)"
    )


def choose_structure(n: int, n_blocks: int = 1, options: Mapping[str, Any] | None = None,
                     budget_gib: float = AUTO_STATE_GIB) -> str:
    """``covariance=auto``: the first structure by ``auto_rank`` that accepts ``options`` and
    whose state for ``n`` parameters in ``n_blocks`` classes fits ``budget_gib``; the last
    candidate when none fits (:func:`build_covariance` then checks the hard limit)."""
    options = dict(options or {})
    rank = int(options.get("rank", 10))
    candidates = []
    for kind, cls in structures().items():
        if cls.auto_rank is None:
            continue
        try:
            cls.check_options(options)
        except ConfigError:
            continue
        candidates.append((cls.auto_rank, kind))
    if not candidates:
        raise ConfigError("covariance=auto found no structure for these options; "
                          f"pass --opt covariance={'|'.join(structures())}")
    candidates.sort()
    for _, kind in candidates:
        if estimate_bytes(kind, n, n_blocks, rank) <= budget_gib * 2**30:
            return kind
    return candidates[-1][1]


def build_covariance(kind: str, n: int, prior_var: float, n_blocks: int = 1,
                     options: Mapping[str, Any] | None = None,
                     max_gib: float = MAX_STATE_GIB) -> Covariance:
    """The prior ``prior_var * I`` of structure ``kind``, its settings read from the method's
    ``options`` (``rank``, ``top_classes``, ``kron_mean_step``, ...).

    The state size is checked before anything is allocated (``full`` on 100+ classes needs
    tens of GiB): too large -> :class:`ConfigError` naming the bytes and structures that fit.
    """
    if prior_var <= 0 or not math.isfinite(prior_var):
        raise ConfigError(f"prior variance must be a positive number, got {prior_var}")
    cls = structure(kind)
    options = dict(options or {})
    _check_memory(kind, n, n_blocks, int(options.get("rank", 10)), max_gib)
    return cls.from_options(n, prior_var, n_blocks, options)


def make_covariance(
    kind: str, n: int, prior_var: float, n_blocks: int = 1, rank: int = 10,
    max_gib: float = MAX_STATE_GIB, top_classes: int = 0, kron_mean_step: str = "natural",
) -> Covariance:
    """Factory behind the ``covariance=full|block|diag|lowrank|kron`` option with the common
    settings as keywords (``top_classes``: see :meth:`LowRankCovariance.update`); see
    :func:`build_covariance`."""
    options = {"rank": rank, "top_classes": top_classes, "kron_mean_step": kron_mean_step}
    return build_covariance(kind, n, prior_var, n_blocks, options, max_gib)
