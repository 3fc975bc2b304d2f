"""Dense covariance: the exact Kalman update."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pyro.distributions as dist
import torch

from pyro_clip.inference.covariance.base import (
    DTYPE,
    Covariance,
    _check_predict,
    _eye,
    _randn,
    safe_cholesky,
)
from pyro_clip.inference.covariance.registry import register_covariance
from pyro_clip.inference.kalman_jacobian import Jacobian


@register_covariance
class FullCovariance(Covariance):
    """Dense ``P`` (n x n); the update never forms the Jacobian densely if it is structured.

    Policy: exact, so neither centring nor rotation changes it (both are exact
    reparametrisations of the isotropic prior) and one pass; generic minibatch size."""

    kind = "full"
    order = 0
    auto_rank = 0  # exact: the most accurate wherever it fits

    @classmethod
    def estimate_bytes(cls, n: int, n_blocks: int = 1, rank: int = 10) -> int:
        """``n^2`` numbers."""
        return 8 * n * n

    @classmethod
    def from_options(cls, n: int, prior_var: float, n_blocks: int,
                     options: Mapping[str, Any]) -> FullCovariance:
        return cls(n, prior_var)

    def __init__(self, n: int, prior_var: float = 1.0) -> None:
        self.n = n
        self.p = prior_var * _eye(n)

    def quad(self, h: Jacobian) -> torch.Tensor:
        return h.mm(h.mm(self.p).T)

    def var(self, h: Jacobian) -> torch.Tensor:
        return h.rowdot(h.mm(self.p))

    def mv(self, v: torch.Tensor) -> torch.Tensor:
        return self.p @ v.double()

    def update(self, h: Jacobian, g: torch.Tensor) -> torch.Tensor:
        hp = h.mm(self.p)  # (m, n) = (P H^T)^T
        chol = safe_cholesky(_eye(h.n_obs, hp) + h.mm(hp.T), "innovation covariance")
        w = torch.linalg.solve_triangular(chol, hp, upper=False)  # L^-1 H P
        self.p.addmm_(w.T, w, alpha=-1.0)  # in place: P is the dominant memory traffic
        return self.p @ g.double()

    def predict(self, forgetting: float = 1.0, noise: float = 0.0) -> None:
        _check_predict(forgetting, noise)
        self.p = self.p / forgetting + noise * _eye(self.n, self.p)

    def sample(self, n_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        chol = safe_cholesky(self.p, "weight covariance")
        eps = _randn((n_samples, self.n), generator, chol.device)
        return eps @ chol.T

    def dense(self) -> torch.Tensor:
        return self.p.clone()

    def diagonal(self) -> torch.Tensor:
        return self.p.diagonal().clone()

    def repair(self) -> None:
        """Symmetrise (updates are in place, so round-off asymmetry accumulates) and check PD."""
        chol = safe_cholesky(self.p, "weight covariance")
        self.p = chol @ chol.T

    def state_dict(self) -> dict[str, Any]:
        return {"p": self.p}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.p = state["p"].to(DTYPE).clone()  # updates are in place: never alias the caller's

    def distribution(self, mean: torch.Tensor) -> torch.distributions.Distribution:
        return dist.MultivariateNormal(mean, scale_tril=safe_cholesky(self.p, "weight covariance"))


