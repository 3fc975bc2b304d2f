"""Sequential Gaussian inference over adapter weights, in the style of ``pyro.contrib.tracking``.

:class:`KalmanState` holds the mean and a :mod:`~pyro_clip.inference.covariance` structure of
a static parameter vector. ``predict`` applies the process model (forgetting / noise),
``update_gaussian`` assimilates ``y = H theta + e, e ~ N(0, R)`` (exact Kalman step), and
``update_categorical`` assimilates one-hot labels through the extended Kalman filter with
observation covariance ``diag(p) - p p^T``, which is the online natural-gradient step
``theta+ = theta + (P^-1 + F)^-1 J^T (y - p)`` with Fisher ``F = J^T (diag p - p p^T) J``
(Ollivier 2018, Thm. 2). ``innovation``, ``log_likelihood_of_update`` and ``mahalanobis``
mirror ``EKFState`` (Mahalanobis gating as in arXiv 2511.01694).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from pyro_clip.inference.covariance import DTYPE, Covariance, safe_cholesky
from pyro_clip.inference.kalman_jacobian import DenseJacobian, Jacobian, KronJacobian
from pyro_clip.inference.posteriors import reshape_event


def categorical_sqrt(probs: torch.Tensor) -> torch.Tensor:
    """``L^T`` with ``L L^T = diag(p) - p p^T``: ``L^T[c, c'] = sqrt(p_c) (d_cc' - p_c')``.

    Check: ``(I - p 1^T) diag(p) (I - 1 p^T) = diag(p) - p p^T`` because ``sum p = 1``.
    """
    p = probs.double()
    eye = torch.eye(p.shape[-1], dtype=DTYPE)
    return p.sqrt().unsqueeze(-1) * (eye - p.unsqueeze(-2))


def probit_probs(mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """Linearised (probit) predictive: ``softmax(mu / sqrt(1 + pi/8 var))`` (MacKay 1992)."""
    return torch.softmax(mean / torch.sqrt(1.0 + math.pi / 8.0 * var.clamp_min(0)), dim=-1)


class KalmanState:
    """Gaussian belief ``N(mean, P)`` over parameters; methods update it in place."""

    def __init__(self, mean: torch.Tensor, cov: Covariance) -> None:
        if mean.ndim != 1 or mean.shape[0] != cov.n:
            raise ValueError(f"mean must be ({cov.n},), got {tuple(mean.shape)}")
        self.mean = mean.to(DTYPE).clone()
        self.cov = cov
        self.n_updates = 0

    def posterior(
        self, event_shape: tuple[int, ...] | None = None
    ) -> torch.distributions.Distribution:
        """The Gaussian belief as a Pyro distribution of the covariance's structure.

        ``event_shape`` (e.g. ``(C, D + 1)`` for the linear head, row-major like ``mean``)
        reshapes its event; ``None`` keeps the structure's own (``(n,)``, or ``(C, P)`` for
        ``kron`` and ``block``).
        """
        d = self.cov.distribution(self.mean)
        return d if event_shape is None else reshape_event(d, tuple(event_shape))

    def predict(self, forgetting: float = 1.0, noise: float = 0.0) -> KalmanState:
        """Static-parameter process model: mean kept, ``P <- P / forgetting + noise I``."""
        self.cov.predict(forgetting, noise)
        return self

    # ----- linear-Gaussian observations --------------------------------------------------
    def innovation(
        self, h: Jacobian, obs_var: torch.Tensor, residual: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Innovation ``r = y - h(mean)`` and its covariance ``S = H P H^T + R`` (R diagonal)."""
        return residual.double(), self.cov.quad(h) + torch.diag(obs_var.double())

    def log_likelihood_of_update(
        self, h: Jacobian, obs_var: torch.Tensor, residual: torch.Tensor
    ) -> torch.Tensor:
        """``log N(r; 0, S)``: the marginal likelihood of the observation before updating."""
        r, s = self.innovation(h, obs_var, residual)
        chol = safe_cholesky(s, "innovation covariance")
        z = torch.linalg.solve_triangular(chol, r[:, None], upper=False)[:, 0]
        return -0.5 * (z @ z) - chol.diagonal().log().sum() - 0.5 * len(r) * math.log(2 * math.pi)

    def mahalanobis(
        self, h: Jacobian, obs_var: torch.Tensor, residual: torch.Tensor
    ) -> torch.Tensor:
        """Squared Mahalanobis distance ``r^T S^-1 r`` of the innovation (chi^2_m if consistent)."""
        r = residual.double()
        if len(r) == 1:
            return r**2 / (self.cov.var(h) + obs_var.double())
        r, s_full = self.innovation(h, obs_var, residual)
        chol = safe_cholesky(s_full, "innovation covariance")
        z = torch.linalg.solve_triangular(chol, r[:, None], upper=False)[:, 0]
        return z @ z

    def update_gaussian(
        self, h: Jacobian, obs_var: torch.Tensor, residual: torch.Tensor
    ) -> torch.Tensor:
        """Exact Kalman update for ``y = H theta + e``, ``e ~ N(0, diag(obs_var))``.

        Whitening by ``R^-1/2`` gives the information form ``P+^-1 = P^-1 + H^T R^-1 H`` and
        ``mean+ = mean + P+ H^T R^-1 r``. Returns the innovation ``r``.
        """
        w = obs_var.double().rsqrt()
        hw = h.scale_rows(w)
        g = hw.tmm((residual.double() * w)[:, None])[:, 0]
        self.mean += self.cov.update(hw, g)
        self.n_updates += 1
        return residual

    # ----- categorical observations (EKF = online natural gradient) ------------------------
    def update_categorical(
        self, logit_jacobian: Jacobian, logits: torch.Tensor, labels: torch.Tensor,
        weight: float = 1.0, shift: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """EKF step on labels ``(B,)`` given logits ``(B, C)`` and their Jacobian ``J``.

        Observation: one-hot ``y`` with mean ``p = softmax(z)`` and covariance
        ``diag(p) - p p^T``; whitened Jacobian ``L^T J`` adds the Fisher, gradient
        ``J^T (y - p)``. ``weight`` tempers the likelihood to ``p(y | w)^weight`` (Fisher and
        gradient times ``weight``; the progressive Bayes update of Hanebeck et al. 2003), so
        ``E`` passes at weight ``1/E`` count each example once while relinearising ``E``
        times. Returns the innovation (B, C).

        By default the logits and ``J`` are taken at the current mean. Iterated posterior
        linearisation passes them at a fixed point ``theta0`` instead and
        ``shift = J (mean - theta0)`` (B, C): the log-likelihood is then its second-order
        expansion at ``theta0``, whose gradient at the mean is ``J^T (y - p - Lambda shift)``
        with ``Lambda = diag p - p p^T`` (the softmax Hessian), so a pass over all examples is
        one Gauss-Newton step from ``theta0`` on the log posterior (Bell 1994, Sec. 3).
        """
        if not 0 < weight <= 1:
            raise ValueError(f"likelihood weight must be in (0, 1], got {weight}")
        if weight != 1.0:
            logit_jacobian = _scaled(logit_jacobian, weight**0.5)
        probs = torch.softmax(logits.double(), dim=-1)
        resid = F.one_hot(labels, probs.shape[-1]).to(DTYPE) - probs
        if shift is not None:
            shift = shift.to(DTYPE)
            resid = resid - (probs * shift - probs * (probs * shift).sum(-1, keepdim=True))
        g = logit_jacobian.tmm(resid.reshape(-1, 1))[:, 0] * weight**0.5
        hw = logit_jacobian.whiten_categorical(probs)
        self.mean += self.cov.update(hw, g)
        self.n_updates += 1
        return resid


def _scaled(jac: Jacobian, factor: float) -> Jacobian:
    """``factor * J`` for the logit Jacobians the adapters produce (Kronecker or dense)."""
    if type(jac) is KronJacobian:
        return KronJacobian(jac.coef, jac.x * factor, identity=jac.identity)
    if type(jac) is DenseJacobian:
        return DenseJacobian(jac.j * factor)
    raise TypeError(f"cannot temper a {type(jac).__name__}; pass weight=1")
