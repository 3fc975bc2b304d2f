"""Per-class block-diagonal covariance (decoupled EKF)."""

from __future__ import annotations

from typing import Any

import pyro.distributions as dist
import torch

from pyro_clip.errors import ConfigError
from pyro_clip.inference.covariance.base import (
    DTYPE,
    Covariance,
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
from pyro_clip.inference.kalman_jacobian import CategoricalKronJacobian, Jacobian, KronJacobian


class BlockCovariance(Covariance):
    """Block-diagonal ``P``: K equal contiguous blocks (per class for a linear head)."""

    kind = "block"

    def __init__(self, n: int, n_blocks: int, prior_var: float = 1.0) -> None:
        if n % n_blocks:
            raise ConfigError(f"{n} parameters cannot be split into {n_blocks} equal blocks")
        self.n, self.k, self.bs = n, n_blocks, n // n_blocks
        self.p = prior_var * _eye(self.bs).repeat(n_blocks, 1, 1)

    def _cross(self, h: Jacobian) -> tuple[torch.Tensor, torch.Tensor]:
        cols = h.block_columns(self.k)  # (K, m, bs)
        return cols, self.p @ cols.transpose(1, 2)  # G_k = P_k J_k^T (K, bs, m)

    def quad(self, h: Jacobian) -> torch.Tensor:
        cols, g = self._cross(h)
        return torch.einsum("kmb,kbn->mn", cols, g)

    def var(self, h: Jacobian) -> torch.Tensor:
        """``diag(H P H^T)``; for a linear head's logit Jacobian (``I_C kron x_b^T``, one
        block per class) that is ``x_b^T P_c x_b``, O(B C P^2) without the zero columns."""
        if isinstance(h, KronJacobian) and h.identity and h.n_classes == self.k:
            x = h.x.to(self.p)
            return torch.einsum("bp,kpq,bq->bk", x, self.p, x).reshape(-1)
        cols, g = self._cross(h)
        return torch.einsum("kmb,kbm->m", cols, g)

    def mv(self, v: torch.Tensor) -> torch.Tensor:
        return (self.p @ v.double().reshape(self.k, self.bs, 1)).reshape(-1)

    def update(self, h: Jacobian, g: torch.Tensor) -> torch.Tensor:
        """Diagonal blocks of the exact step from the block prior (decoupled EKF).

        One categorical example (``h`` = ``L^T kron x^T``): each block sees the rank-1
        ``x x^T``; with ``v_c = P_c x`` the step is ``delta_c = P_c g_c - v_c (M r)_c`` and
        ``P_c -= (diag M)_c v_c v_c^T`` (``r_c = v_c^T g_c``, M from
        :func:`categorical_gain_terms`): O(C P^2), no (C x C) innovation. Otherwise the
        generic path below, O(C m^2 P + m^3) with m = B C rows.
        """
        if _single_categorical(h) and self.k == h.n_classes:
            return self._update_single_categorical(h, g)
        if _minibatch_categorical(h) and self.k == h.n_classes:
            return self._update_minibatch_categorical(h, g)
        cols, cross = self._cross(h)
        chol = safe_cholesky(
            _eye(h.n_obs, cross) + torch.einsum("kmb,kbn->mn", cols, cross), "innovation covariance"
        )
        gk = g.double().reshape(self.k, self.bs)
        pg = (self.p @ gk.unsqueeze(-1)).squeeze(-1)
        u = torch.cholesky_solve(torch.einsum("kbm,kb->m", cross, gk)[:, None], chol)[:, 0]
        delta = pg - cross @ u
        w = torch.linalg.solve_triangular(chol, cross.transpose(1, 2), upper=False)  # (K,m,bs)
        self.p.baddbmm_(w.transpose(1, 2), w, alpha=-1.0)
        return delta.reshape(-1)

    def _update_single_categorical(self, h: CategoricalKronJacobian, g: torch.Tensor):
        x = h.x[0].to(self.p)
        gk = g.to(self.p).reshape(self.k, self.bs)
        # one pass over P (memory-bound): [P_c x, P_c g_c] together
        both = torch.bmm(self.p, torch.stack([x.expand_as(gk), gk], dim=2))
        v, pg = both[..., 0], both[..., 1]  # (K, bs) each
        m_r, diag_m = categorical_gain_terms(h.probs[0], v @ x, (v * gk).sum(1))
        delta = pg - v * m_r[:, None]
        self.p.baddbmm_((v * -diag_m[:, None]).unsqueeze(2), v.unsqueeze(1))  # in place
        return delta.reshape(-1)

    def _update_minibatch_categorical(self, h: CategoricalKronJacobian, g: torch.Tensor):
        """B categorical examples: ``V_c = P_c X^T``, ``Q_c = X V_c``, ``r_c = V_c^T g_c``,
        ``delta_c = P_c g_c - V_c (M r)_c``, ``P_c -= V_c M_cc V_c^T`` (M from
        :func:`categorical_block_gain`): O(C B P^2 + C B^3), one read and one in-place write
        of the state per minibatch."""
        x = h.x.to(self.p)  # (B, bs)
        b = x.shape[0]
        gk = g.to(self.p).reshape(self.k, self.bs)
        rhs = torch.cat([x.T.expand(self.k, self.bs, b), gk.unsqueeze(-1)], dim=2)
        both = torch.bmm(self.p, rhs)  # one pass over P: [P_c X^T, P_c g_c]
        v, pg = both[..., :b].contiguous(), both[..., b]  # (K, bs, B), (K, bs)
        r = torch.einsum("kpb,kp->kb", v, gk)
        m_r, m_blocks = categorical_block_gain(h.probs, torch.matmul(x, v), r)
        delta = pg - (v @ m_r.unsqueeze(-1)).squeeze(-1)
        self.p.baddbmm_(v @ m_blocks, v.transpose(1, 2), alpha=-1.0)  # in place
        return delta.reshape(-1)

    def predict(self, forgetting: float = 1.0, noise: float = 0.0) -> None:
        _check_predict(forgetting, noise)
        self.p = self.p / forgetting + noise * _eye(self.bs, self.p)

    def sample(self, n_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        chol = safe_cholesky(self.p, "weight covariance block")
        eps = _randn((self.k, self.bs, n_samples), generator, chol.device)
        return (chol @ eps).permute(2, 0, 1).reshape(n_samples, self.n)

    def dense(self) -> torch.Tensor:
        return torch.block_diag(*self.p)

    def diagonal(self) -> torch.Tensor:
        return self.p.diagonal(dim1=1, dim2=2).reshape(-1).clone()

    def repair(self) -> None:
        chol = safe_cholesky(self.p, "weight covariance block")
        self.p = chol @ chol.transpose(1, 2)

    def state_dict(self) -> dict[str, Any]:
        return {"p": self.p}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.p = state["p"].to(DTYPE).clone()  # updates are in place: never alias the caller's

    def distribution(self, mean: torch.Tensor) -> torch.distributions.Distribution:
        """Event (K, n/K): one MultivariateNormal per block (per class for a linear head)."""
        chol = safe_cholesky(self.p, "weight covariance block")
        return dist.MultivariateNormal(mean.reshape(self.k, self.bs), scale_tril=chol).to_event(1)


