"""The ``covariance=`` factory: names, memory estimates and construction."""

from __future__ import annotations

import math

from pyro_clip.errors import ConfigError
from pyro_clip.inference.covariance.base import Covariance
from pyro_clip.inference.covariance.block import BlockCovariance
from pyro_clip.inference.covariance.diag import DiagCovariance
from pyro_clip.inference.covariance.full import FullCovariance
from pyro_clip.inference.covariance.lowrank import LowRankCovariance

COVARIANCES = ("full", "block", "diag", "lowrank", "kron")

#: state larger than this is refused before allocating (``max_state_gib`` overrides it)
MAX_STATE_GIB = 8.0


def estimate_bytes(kind: str, n: int, n_blocks: int = 1, rank: int = 10) -> int:
    """float64 bytes the structure's state will take, computed before allocating it."""
    per_block = n // max(n_blocks, 1)
    numbers = {
        "full": n * n,
        "block": n_blocks * per_block * per_block,
        "diag": n,
        "lowrank": n * (rank + 1),
        "kron": 2 * (n_blocks**2 + per_block**2) + n_blocks + per_block + n,
    }.get(kind, 0)
    return 8 * numbers


def _check_memory(kind: str, n: int, n_blocks: int, rank: int, max_gib: float) -> None:
    need = estimate_bytes(kind, n, n_blocks, rank)
    if need <= max_gib * 2**30:
        return
    fits = [k for k in ("kron", "block", "lowrank", "diag")
            if k != kind and estimate_bytes(k, n, n_blocks, rank) <= max_gib * 2**30]
    raise ConfigError(
        f"covariance={kind} for {n} parameters needs {need / 2**30:.1f} GiB "
        f"({need} bytes), more than the {max_gib:g} GiB limit; use covariance="
        + "|".join(fits or ["diag"]) + " (or raise --opt max_state_gib=...)"
    )


def make_covariance(
    kind: str, n: int, prior_var: float, n_blocks: int = 1, rank: int = 10,
    max_gib: float = MAX_STATE_GIB, top_classes: int = 0, kron_mean_step: str = "natural",
) -> Covariance:
    """Factory behind the ``covariance=full|block|diag|lowrank|kron`` option
    (``top_classes``: see :meth:`LowRankCovariance.update`).

    The state size is checked before anything is allocated (``full`` on 100+ classes needs
    tens of GiB): too large -> :class:`ConfigError` naming the bytes and structures that fit.
    """
    if prior_var <= 0 or not math.isfinite(prior_var):
        raise ConfigError(f"prior variance must be a positive number, got {prior_var}")
    if kind in COVARIANCES:
        _check_memory(kind, n, n_blocks, rank, max_gib)
    if kind == "kron":
        from pyro_clip.inference.covariance.kron import KronCovariance  # imports this module

        if n % n_blocks:
            raise ConfigError(f"{n} parameters cannot be split into {n_blocks} classes")
        return KronCovariance(n_blocks, n // n_blocks, prior_var, mean_step=kron_mean_step)
    if kind == "full":
        return FullCovariance(n, prior_var)
    if kind == "block":
        return BlockCovariance(n, n_blocks, prior_var)
    if kind == "diag":
        return DiagCovariance(n, prior_var)
    if kind == "lowrank":
        return LowRankCovariance(n, rank, prior_var, top_classes)
    raise ConfigError(f"unknown covariance {kind!r}; choose one of {', '.join(COVARIANCES)}")
