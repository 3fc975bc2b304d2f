"""Kronecker-factored precision for a linear head (``covariance=kron``), K-FAC style.

Parameters ``vec(W)`` row-major, ``W`` (C, P) with ``P = D + 1`` inputs. A whitened linear-head
Jacobian ``H_b = coef_b kron x_b^T`` adds the information ``sum_b F_b kron x_b x_b^T`` with
``F_b = coef_b^T coef_b`` (``diag p_b - p_b p_b^T`` for the categorical EKF). As in K-FAC
(Martens & Grosse 2015, eq. 11) and the online Kronecker-factored Laplace (Ritter et al. 2018,
eq. 7) that sum is approximated by a product of the two running sums, and the prior precision
``tau = 1 / prior_var`` is added exactly in the factors' joint eigenbasis (as laplace-torch's
``KronDecomposed`` does; Ritter et al.'s factor-wise damping would add cross terms):

    Lambda = A kron G + tau I,   A = sum_b F_b  (C x C),   G = (1/n) sum_b x_b x_b^T  (P x P),
    A = U_A diag(a) U_A^T,  G = U_G diag(g) U_G^T
    =>  Sigma = Lambda^-1 = (U_A kron U_G) diag(1 / (a_k g_l + tau)) (U_A kron U_G)^T.

The approximation is exact whenever every example shares the class factor (``F_b = F``) or
the input direction (``x_b x_b^T`` equal up to scale for Gaussian observations with one
input), e.g. an isotropic Gaussian observation of every logit. The class factor of the
categorical Fisher is singular (``F_b 1 = 0``: a common shift of all logits is not
observed); its zero eigenvalues meet ``tau > 0``, so the prior alone determines that
direction, as it should. The mean step is the natural-gradient step through both factors,
``delta = Sigma g = U_A [(U_A^T Gm U_G) / (a g^T + tau)] U_G^T`` with ``Gm`` the gradient as a
(C, P) matrix; it never forms a C P x C P matrix. The predictive logit variance at input x is
``var_c = sum_kl U_A[c,k]^2 (U_G^T x)_l^2 / (a_k g_l + tau)``.

Mean step (``mean_step``): ``natural`` is the K-FAC natural-gradient step above, through the
*posterior* factors. ``kalman`` is the extended Kalman filter's step with the gain of the
Kronecker *prior* of the minibatch (as ``block`` and ``diag`` take theirs),
``delta = P g - P H^T S^-1 H P g``, ``S = I + H P H^T`` (m = B C rows; Woodbury: equal to
``(P^-1 + H^T H)^-1 g``, the exact posterior step had ``P`` been the whole prior), so the
K-FAC product only enters through the previous minibatches' information. On the first
minibatch (prior ``tau^-1 I``, exact) it is exactly the full filter's step. It costs the
m x m innovation (``quad``, O(B^2 C (C + P)) plus O(m^3)); ``auto`` takes it while
m <= ``KALMAN_STEP_MAX_OBS`` and the natural step beyond (ImageNet-sized minibatches).

Costs: update O(B C^2 + B P^2) for the factors plus two symmetric eigendecompositions,
O(C^3 + P^3), per minibatch (so kron prefers large minibatches); memory 2 (C^2 + P^2).
Forgetting scales the whole precision (``A`` and ``tau``); additive process noise would break
the Kronecker form and is refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from pyro_clip.errors import ConfigError
from pyro_clip.inference.covariance.base import DTYPE, Covariance, _check_predict, safe_cholesky
from pyro_clip.inference.covariance.registry import register_covariance
from pyro_clip.inference.kalman_jacobian import Jacobian, KronJacobian
from pyro_clip.inference.posteriors import MatrixNormal

KALMAN_STEP_MAX_OBS = 2048  # mean_step=auto: innovation rows (B C) up to which "kalman" runs
MEAN_STEPS = ("auto", "kalman", "natural")


@register_covariance
class KronCovariance(Covariance):
    """Precision ``A kron G + tau I`` over a (C, P) weight matrix (see module docstring).

    Policy: the input factor keeps the inputs' correlations, so neither centring nor rotation
    is applied (rotation is exact, ``G -> U^T G U``); no innovation is formed but each
    minibatch pays two eigendecompositions, so ``batch_size=auto`` takes ``max(16, C)``
    examples. Settings: ``kron_mean_step``. Linear heads only."""

    kind = "kron"
    order = 4
    auto_rank = 2

    @classmethod
    def auto_batch_size(cls, n_classes: int) -> int:
        return max(16, n_classes)

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> None:
        """Linear head only: the factors are over its classes x inputs."""
        if options.get("adapter", "linear") != "linear":
            raise ConfigError(
                "kalman: covariance=kron factors the linear head's weights (classes x inputs); "
                "use adapter=linear, or covariance=block|diag|lowrank with adapter=residual"
            )

    @classmethod
    def from_options(cls, n: int, prior_var: float, n_blocks: int,
                     options: Mapping[str, Any]) -> KronCovariance:
        if n % n_blocks:
            raise ConfigError(f"{n} parameters cannot be split into {n_blocks} classes")
        return cls(n_blocks, n // n_blocks, prior_var,
                   mean_step=options.get("kron_mean_step", "natural"))

    def __init__(
        self,
        n_classes: int,
        n_in: int,
        prior_var: float = 1.0,
        dtype: torch.dtype = DTYPE,
        device: torch.device | str | None = None,
        mean_step: str = "natural",
    ) -> None:
        if mean_step not in MEAN_STEPS:
            raise ConfigError(f"kron mean_step must be one of {', '.join(MEAN_STEPS)}, "
                              f"got {mean_step!r}")
        self.mean_step = mean_step
        self.c, self.p, self.n = n_classes, n_in, n_classes * n_in
        kw = {"dtype": dtype, "device": device}
        self.a_sum = torch.zeros(n_classes, n_classes, **kw)
        self.g_sum = torch.zeros(n_in, n_in, **kw)
        self.count = torch.zeros((), **kw)
        self.tau = torch.tensor(1.0 / prior_var, **kw)
        self._refresh()

    @classmethod
    def estimate_bytes(cls, n: int, n_blocks: int = 1, rank: int = 10) -> int:
        """State plus eigen-cache: ``2 (C^2 + P^2) + C + P + C P`` numbers (``C = n_blocks``
        classes, ``P = n / C`` inputs)."""
        c, p = n_blocks, n // max(n_blocks, 1)
        return 8 * (2 * (c**2 + p**2) + c + p + n)

    # ----- factors ------------------------------------------------------------------------
    def _refresh(self) -> None:
        """Eigendecompose ``A`` and ``G``; eigenvalues clipped at 0 (both are PSD)."""
        sym = lambda m: 0.5 * (m + m.T)  # noqa: E731
        a, self.ua = torch.linalg.eigh(sym(self.a_sum))
        g_mean = self.g_sum / self.count.clamp_min(1.0)
        g, self.ug = torch.linalg.eigh(sym(g_mean))
        self.ea, self.eg = a.clamp_min(0), g.clamp_min(0)
        self.d = 1.0 / (torch.outer(self.ea, self.eg) + self.tau)  # (C, P) eigen-variances

    def _kron(self, h: Jacobian) -> KronJacobian:
        if not isinstance(h, KronJacobian) or h.n_classes != self.c or h.n_in != self.p:
            raise ConfigError(
                "covariance=kron needs the linear head's Kronecker Jacobian "
                f"({self.c} classes x {self.p} inputs); use adapter=linear, or covariance="
                "block|diag|lowrank for other adapters"
            )
        return h

    def _rotated(self, h: KronJacobian) -> tuple[torch.Tensor, torch.Tensor]:
        """``coef_b U_A`` (B, k, C) (None for identity coef) and ``x_b U_G`` (B, P)."""
        xt = h.x.to(self.ug) @ self.ug
        ct = None if h.identity else h.coef_mm(self.ua)
        return ct, xt

    # ----- Covariance interface -------------------------------------------------------------
    def var(self, h: Jacobian) -> torch.Tensor:
        h = self._kron(h)
        ct, xt = self._rotated(h)
        m = (xt * xt) @ self.d.T  # (B, C): sum_l (x U_G)_l^2 d[k, l]
        if ct is None:
            return (m @ (self.ua * self.ua).T).reshape(-1)
        return torch.einsum("bik,bk->bi", ct * ct, m).reshape(-1)

    def quad(self, h: Jacobian) -> torch.Tensor:
        h = self._kron(h)
        ct, xt = self._rotated(h)
        m2 = torch.einsum("bl,el,kl->bek", xt, xt, self.d)
        if ct is None:
            out = torch.einsum("ik,jk,bek->biej", self.ua, self.ua, m2)
        else:
            out = torch.einsum("bik,ejk,bek->biej", ct, ct, m2)
        return out.reshape(h.n_obs, h.n_obs)

    def mv(self, v: torch.Tensor) -> torch.Tensor:
        """``Sigma v`` through both eigenbases, O(C^2 P + C P^2)."""
        m = v.to(self.ua).reshape(self.c, self.p)
        return (self.ua @ ((self.ua.T @ m @ self.ug) * self.d) @ self.ug.T).reshape(-1)

    def _kalman_step(self, h: KronJacobian, g: torch.Tensor) -> torch.Tensor:
        """``P g - P H^T S^-1 H P g`` with the current (prior) factors, ``S = I + H P H^T``."""
        pg = self.mv(g)
        eye = torch.eye(h.n_obs, dtype=self.d.dtype, device=self.d.device)
        chol = safe_cholesky(eye + self.quad(h), "innovation covariance")
        u = torch.cholesky_solve(h.mm(pg[:, None]).to(pg), chol)
        return pg - self.mv(h.tmm(u)[:, 0])

    def update(self, h: Jacobian, g: torch.Tensor) -> torch.Tensor:
        """Add the minibatch to both factors; mean step per ``mean_step`` (module docstring)."""
        h = self._kron(h)
        kalman = self.mean_step == "kalman" or (
            self.mean_step == "auto" and h.n_obs <= KALMAN_STEP_MAX_OBS)
        delta = self._kalman_step(h, g.to(self.d)) if kalman else None
        x = h.x.to(self.g_sum)
        self.a_sum += h.class_information().to(self.a_sum)
        self.g_sum += x.T @ x
        self.count += x.shape[0]
        self._refresh()
        return self.mv(g) if delta is None else delta

    def predict(self, forgetting: float = 1.0, noise: float = 0.0) -> None:
        _check_predict(forgetting, noise, forgetting_only="Kronecker (kron)")
        if forgetting < 1:
            self.a_sum *= forgetting
            self.tau = self.tau * forgetting
            self._refresh()

    def sample(self, n_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        eps = torch.randn(n_samples, self.c, self.p, dtype=self.d.dtype, generator=generator)
        eps = eps.to(self.d.device) * self.d.sqrt()
        return (self.ua @ eps @ self.ug.T).reshape(n_samples, self.n)

    def dense(self) -> torch.Tensor:
        u = torch.kron(self.ua, self.ug)
        return (u * self.d.reshape(-1)) @ u.T

    def diagonal(self) -> torch.Tensor:
        return ((self.ua * self.ua) @ self.d @ (self.ug * self.ug).T).reshape(-1)

    def repair(self) -> None:
        """Always positive definite (eigenvalues clipped at 0 plus ``tau > 0``); re-symmetrise."""
        self.a_sum = 0.5 * (self.a_sum + self.a_sum.T)
        self.g_sum = 0.5 * (self.g_sum + self.g_sum.T)
        self._refresh()

    def log_det(self) -> torch.Tensor:
        """``log det Sigma = -sum_kl log(a_k g_l + tau)``."""
        return self.d.log().sum()

    def state_dict(self) -> dict[str, Any]:
        return {"a_sum": self.a_sum, "g_sum": self.g_sum, "count": self.count, "tau": self.tau}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("a_sum", "g_sum", "count", "tau"):
            setattr(self, key, state[key].to(self.a_sum).clone())
        self._refresh()

    def distribution(self, mean: torch.Tensor) -> MatrixNormal:
        """Event (C, P): ``MatrixNormal`` in the factors' eigenbasis."""
        return MatrixNormal(mean.to(self.d).reshape(self.c, self.p), self.ua, self.ug, self.d)

    def memory_bytes(self) -> int:
        tensors = (self.a_sum, self.g_sum, self.ua, self.ug, self.ea, self.eg, self.d)
        return sum(t.numel() * t.element_size() for t in tensors)
