"""Diagonal-plus-low-rank precision (LoFi)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any

import torch

from pyro_clip.errors import ConfigError
from pyro_clip.inference.covariance.base import (
    DTYPE,
    Covariance,
    CovarianceWarning,
    _check_predict,
    _eye,
    _randn,
    safe_cholesky,
)
from pyro_clip.inference.covariance.registry import register_covariance
from pyro_clip.inference.kalman_jacobian import CategoricalKronJacobian, Jacobian
from pyro_clip.inference.posteriors import LowRankPrecisionNormal


@register_covariance
class LowRankCovariance(Covariance):
    """LoFi: precision ``diag(u) + W W^T`` with ``W`` (n, R), covariance by Woodbury.

    Policy: rotate a linear head's inputs into their principal axes (the diagonal part then
    carries the information in a better basis; centring on top does not help,
    docs/kalman.md); generic minibatch size. Settings: ``rank`` R, ``top_classes``."""

    kind = "lowrank"
    order = 3
    rotate_inputs = True
    #: LoFi's step solves with the truncated precision, so relinearising at its mean is not
    #: a Gauss-Newton step and lowered the posterior density in tests: one pass
    iterations = 1

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> None:
        """One filter pass: relinearising at LoFi's mean does not climb the posterior."""
        if options.get("iterations", "auto") not in ("auto", 1):
            raise ConfigError(
                "kalman: covariance=lowrank takes one filter pass (its truncated precision does "
                "not give a Gauss-Newton step); use iterations=1, or covariance=full|block|"
                "diag|kron to iterate the posterior linearisation")

    @classmethod
    def estimate_bytes(cls, n: int, n_blocks: int = 1, rank: int = 10) -> int:
        """``n (R + 1)`` numbers."""
        return 8 * n * (rank + 1)

    @classmethod
    def from_options(cls, n: int, prior_var: float, n_blocks: int,
                     options: Mapping[str, Any]) -> LowRankCovariance:
        return cls(n, int(options.get("rank", 10)), prior_var,
                   int(options.get("top_classes", 0)))

    def __init__(self, n: int, rank: int, prior_var: float = 1.0, top_classes: int = 0) -> None:
        if rank < 1:
            raise ConfigError(f"low-rank covariance needs rank >= 1, got {rank}; pass rank=10")
        if top_classes < 0:
            raise ConfigError(f"top_classes must be >= 0 (0 keeps every class), got {top_classes}")
        self.n, self.rank, self.top_classes = n, rank, top_classes
        self.u = torch.full((n,), 1.0 / prior_var, dtype=DTYPE)
        self.w = torch.zeros(n, rank, dtype=DTYPE)

    def _woodbury(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``G = diag(u)^-1 W`` and the Cholesky factor of ``I + W^T G``."""
        g = self.w / self.u[:, None]
        return g, safe_cholesky(_eye(self.rank, self.w) + self.w.T @ g, "low-rank capacitance")

    def mv(self, v: torch.Tensor) -> torch.Tensor:
        v = v.double()
        g, chol = self._woodbury()
        return v / self.u - g @ torch.cholesky_solve((g.T @ v)[:, None], chol)[:, 0]

    def quad(self, h: Jacobian) -> torch.Tensor:
        """``H diag(u)^-1 H^T - (H G) (I + W^T G)^-1 (H G)^T`` without forming ``H^T``."""
        g, chol = self._woodbury()
        hg = torch.linalg.solve_triangular(chol, h.mm(g).T, upper=False)  # (R, m)
        return h.quad_diag(1.0 / self.u) - hg.T @ hg

    def var(self, h: Jacobian) -> torch.Tensor:
        g, chol = self._woodbury()
        hg = torch.linalg.solve_triangular(chol, h.mm(g).T, upper=False)
        return h.sq_mv(1.0 / self.u) - (hg * hg).sum(0)

    def update(self, h: Jacobian, g: torch.Tensor) -> torch.Tensor:
        """LoFi truncation of ``[W, H^T]`` from its (R + m) Gram, never forming ``H^T``.

        ``Gram = [[W^T W, (H W)^T], [H W, H H^T]]``; its top-R eigenvectors ``[t_W; t_H]``
        give ``W+ = W t_W + H^T t_H`` and the moved mass
        ``u += rowsq(W) + diag(H^T H) - rowsq(W+)``. Memory O(n R + m^2), time
        O(m n R + (R + m)^3) with a Kronecker Jacobian (``H H^T`` from its factors).
        ``top_classes = K`` (categorical only, K < C) truncates with each example's K
        likeliest classes' rows of ``H`` (m = B K): the other rows' information joins the
        moved mass on the diagonal, as LoFi does with its own truncation; exact for K >= C.
        """
        r = self.rank
        obs = h
        if isinstance(h, CategoricalKronJacobian) and 0 < self.top_classes < h.n_classes:
            obs = h.top_rows(self.top_classes)
        hw = obs.mm(self.w)  # (m, R)
        gram = torch.cat([torch.cat([self.w.T @ self.w, hw.T], 1),
                          torch.cat([hw, obs.gram()], 1)], 0)
        _, evecs = torch.linalg.eigh(gram)
        top = evecs[:, -r:]  # eigh sorts ascending
        new_w = self.w @ top[:r] + obs.tmm(top[r:].contiguous())
        self.u = self.u + (self.w * self.w).sum(1) + h.col_sq() - (new_w * new_w).sum(1)
        self.w = new_w
        self.repair()
        return self.mv(g)

    def predict(self, forgetting: float = 1.0, noise: float = 0.0) -> None:
        _check_predict(forgetting, noise, forgetting_only="low-rank (LoFi)")
        self.u = self.u * forgetting
        self.w = self.w * math.sqrt(forgetting)

    def sample(self, n_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        e1 = _randn((n_samples, self.n), generator, self.u.device)
        e2 = _randn((n_samples, self.rank), generator, self.u.device)
        root = e1 * self.u.sqrt() + e2 @ self.w.T  # covariance = precision
        g, chol = self._woodbury()
        return root / self.u - (g @ torch.cholesky_solve(g.T @ root.T, chol)).T

    def dense(self) -> torch.Tensor:
        return torch.linalg.inv(torch.diag(self.u) + self.w @ self.w.T)

    def diagonal(self) -> torch.Tensor:
        g, chol = self._woodbury()
        hg = torch.linalg.solve_triangular(chol, g.T, upper=False)
        return 1.0 / self.u - (hg * hg).sum(0)

    def repair(self) -> None:
        floor = 1e-12 * float(self.u.abs().max().clamp_min(1e-300))
        if bool((self.u <= floor).any()):
            warnings.warn(
                "low-rank covariance: diagonal precision lost positivity; clamped it",
                CovarianceWarning,
                stacklevel=2,
            )
            self.u = self.u.clamp_min(floor)

    def state_dict(self) -> dict[str, Any]:
        return {"u": self.u, "w": self.w}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.u, self.w = state["u"].to(DTYPE).clone(), state["w"].to(DTYPE).clone()

    def distribution(self, mean: torch.Tensor) -> torch.distributions.Distribution:
        return LowRankPrecisionNormal(mean, self.u, self.w)

