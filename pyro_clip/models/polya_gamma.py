"""Pólya-Gamma variables PG(1, c) (Polson, Scott & Windle 2013, JASA): draws and moments.

``E[omega] = tanh(c/2) / (2c)`` and ``Var[omega] = (sinh c - c) / (4 c^3 cosh^2(c/2))``
(Polson et al. 2013, sec. 3; limits 1/4 and 1/24 at c = 0). Draws come from the
``polyagamma`` package (exact samplers, no gradient); we do not hand-write a sampler.
"""

from __future__ import annotations

import numpy as np
import torch
from polyagamma import random_polyagamma

#: |c| below which the series expansions replace the closed forms (avoids 0/0)
_SMALL = 1e-4


def pg_mean(c: torch.Tensor) -> torch.Tensor:
    """``E[PG(1, c)] = tanh(c/2) / (2c)``, with the c -> 0 limit ``1/4 - c^2/48``."""
    c = c.abs()
    safe = torch.where(c < _SMALL, torch.ones_like(c), c)
    return torch.where(c < _SMALL, 0.25 - c**2 / 48, torch.tanh(safe / 2) / (2 * safe))


def pg_variance(c: torch.Tensor) -> torch.Tensor:
    """``Var[PG(1, c)] = (sinh c - c) / (4 c^3 cosh^2(c/2))``, c -> 0 limit ``1/24``.

    Evaluated in float64; the closed form cancels badly for small |c|, where the Taylor
    series ``1/24 - c^2/120 + 17 c^4/13440`` is used instead. From the series representation
    ``Var = 1/(4 pi^4) sum_k ((k-1/2)^2 + c^2/(4 pi^2))^-2`` and ``sum_k (k-1/2)^-2m =
    (2^2m - 1) zeta(2m)`` (pi^4/6, pi^6/15, 17 pi^8/630); truncation error ~1e-15 relative
    for |c| < 1e-2.
    """
    c64 = c.double().abs()
    small = c64 < 1e-2
    safe = torch.where(small, torch.ones_like(c64), c64)
    closed = (torch.sinh(safe) - safe) / (4 * safe**3 * torch.cosh(safe / 2) ** 2)
    c2 = c64**2
    series = 1 / 24 - c2 / 120 + 17 * c2**2 / 13440
    return torch.where(small, series, closed).to(c.dtype)


def sample_pg(c: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """One PG(1, c_i) draw per entry of ``c`` (no gradient), same shape, dtype and device.

    ``rng`` (a seeded NumPy generator) makes the draws reproducible. PG(1, c) is symmetric
    in c, so negative tilts are valid (the official code's clamp to c >= 1e-8 is not needed).
    """
    z = c.detach().cpu().numpy()  # a view, no copy, on CPU; polyagamma wants float64
    draws = random_polyagamma(1.0, z.astype(np.float64, copy=False), random_state=rng)
    out = torch.from_numpy(np.asarray(draws))
    return out if c.dtype == torch.float64 and c.device.type == "cpu" else out.to(c.device,
                                                                                    c.dtype)
