"""Diagonal covariance (fully decoupled EKF)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import pyro.distributions as dist
import torch

from pyro_clip.inference.covariance.base import (
    DTYPE,
    Covariance,
    CovarianceWarning,
    _check_predict,
    _eye,
    _randn,
    safe_cholesky,
)
from pyro_clip.inference.covariance.gains import (
    _minibatch_categorical,
    _single_categorical,
    categorical_block_gain,
    categorical_gain_terms,
)
from pyro_clip.inference.covariance.registry import register_covariance
from pyro_clip.inference.kalman_jacobian import CategoricalKronJacobian, Jacobian


@register_covariance
class DiagCovariance(Covariance):
    """Diagonal ``P`` = diag(d).

    Policy: centre and rotate a linear head's inputs (the diagonal then approximates the
    information in a basis where the inputs' second moment is diagonal) and take two tempered
    passes (the projection after each update loses correlations that a second, relinearised
    pass recovers); one example per minibatch, its O(C P) Sherman-Morrison path
    (docs/kalman.md has the measurements behind each choice)."""

    kind = "diag"
    order = 2
    center_inputs = True
    rotate_inputs = True
    tempered_passes = 2

    @classmethod
    def auto_batch_size(cls, n_classes: int) -> int:
        return 1

    @classmethod
    def estimate_bytes(cls, n: int, n_blocks: int = 1, rank: int = 10) -> int:
        """``n`` numbers."""
        return 8 * n

    @classmethod
    def from_options(cls, n: int, prior_var: float, n_blocks: int,
                     options: Mapping[str, Any]) -> DiagCovariance:
        return cls(n, prior_var)

    def __init__(self, n: int, prior_var: float = 1.0) -> None:
        self.n = n
        self.d = torch.full((n,), float(prior_var), dtype=DTYPE)

    def quad(self, h: Jacobian) -> torch.Tensor:
        return h.quad_diag(self.d)

    def var(self, h: Jacobian) -> torch.Tensor:
        return h.sq_mv(self.d)

    def mv(self, v: torch.Tensor) -> torch.Tensor:
        return self.d * v.double()

    def update(self, h: Jacobian, g: torch.Tensor) -> torch.Tensor:
        """``S = I + H D H^T``; step ``D g - D H^T S^-1 H D g``; keep ``diag(D - D H^T S^-1 H D)``.

        Never forms ``P H^T`` (n x m): with a Kronecker Jacobian the cost is O(B^2 C P + m^3)
        instead of O(m^2 n). One categorical example: O(C P) via
        :func:`categorical_gain_terms` (``v_c = d_c x``, ``d_c -= (diag M)_c v_c^2``).
        """
        if _single_categorical(h) and self.n == h.n_params:
            x = h.x[0].to(self.d)
            d = self.d.reshape(h.n_classes, h.n_in)
            gk = g.to(self.d).reshape(h.n_classes, h.n_in)
            v = d * x
            m_r, diag_m = categorical_gain_terms(h.probs[0], v @ x, (v * gk).sum(1))
            delta = d * gk - v * m_r[:, None]
            self.d = (d - diag_m[:, None] * v * v).reshape(-1)
            self.repair()
            return delta.reshape(-1)
        if _minibatch_categorical(h) and self.n == h.n_params:
            return self._update_minibatch_categorical(h, g)
        chol = safe_cholesky(_eye(h.n_obs, self.d) + h.quad_diag(self.d), "innovation covariance")
        dg = self.d * g.double()
        delta = dg - self.d * h.tmm(torch.cholesky_solve(h.mm(dg[:, None]), chol))[:, 0]
        s_inv = torch.cholesky_solve(_eye(h.n_obs, chol), chol)
        self.d = self.d - self.d**2 * h.tquad_diag(s_inv)
        self.repair()
        return delta

    def _update_minibatch_categorical(self, h: CategoricalKronJacobian, g: torch.Tensor):
        """B categorical examples, :func:`categorical_block_gain` with ``P_c = diag(d_c)``:
        ``Q_c = X D_c X^T``, ``delta_c = d_c g_c - d_c X^T (M r)_c`` and
        ``d_c -= d_c^2 diag(X^T M_cc X)``; O(C B^2 P + C B^3)."""
        x = h.x.to(self.d)  # (B, P)
        d = self.d.reshape(h.n_classes, h.n_in)
        dg = d * g.to(self.d).reshape(h.n_classes, h.n_in)
        q = torch.matmul(x.unsqueeze(0) * d.unsqueeze(1), x.T)  # (C, B, B)
        m_r, m_blocks = categorical_block_gain(h.probs, q, dg @ x.T)
        delta = dg - d * (m_r @ x)
        self.d = (d - d * d * ((m_blocks @ x) * x).sum(1)).reshape(-1)
        self.repair()
        return delta.reshape(-1)

    def predict(self, forgetting: float = 1.0, noise: float = 0.0) -> None:
        _check_predict(forgetting, noise)
        self.d = self.d / forgetting + noise

    def sample(self, n_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return _randn((n_samples, self.n), generator, self.d.device) * self.d.sqrt()

    def dense(self) -> torch.Tensor:
        return torch.diag(self.d)

    def diagonal(self) -> torch.Tensor:
        return self.d.clone()

    def repair(self) -> None:
        floor = 1e-12 * float(self.d.abs().max().clamp_min(1e-300))
        if bool((self.d <= floor).any()):
            warnings.warn(
                f"diagonal covariance had {(self.d <= floor).sum()} non-positive entries; "
                f"clamped them to {floor:.3g}",
                CovarianceWarning,
                stacklevel=2,
            )
            self.d = self.d.clamp_min(floor)

    def state_dict(self) -> dict[str, Any]:
        return {"d": self.d}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.d = state["d"].to(DTYPE).clone()

    def distribution(self, mean: torch.Tensor) -> torch.distributions.Distribution:
        return dist.Normal(mean, self.d.sqrt()).to_event(1)


