"""Covariance structures for Kalman filtering of adapter weights, behind one interface.

Every structure performs the same information update: with a whitened Jacobian ``H``
(observation noise already divided out, so the information added is ``H^T H``) and the
log-likelihood gradient ``g``, the exact Kalman step from prior covariance ``P`` is
``S = I + H P H^T``, ``P+ = P - P H^T S^-1 H P`` and ``delta = P+ g`` (Ollivier 2018, eq. 9-10).

* :class:`FullCovariance` keeps ``P`` exactly (n x n).
* :class:`BlockCovariance` keeps the diagonal blocks of ``P+`` (decoupled EKF, Puskorius &
  Feldkamp 1991); the mean step uses the gain of the block prior.
* :class:`DiagCovariance` keeps ``diag(P+)`` (fully decoupled EKF); mean step as above.
* :class:`LowRankCovariance` keeps the precision as ``diag(u) + W W^T`` with rank R (LoFi,
  Chang et al. 2023, eq. 19-21): ``[W, H^T]`` is truncated to its top-R singular directions,
  the dropped mass goes to the diagonal, and ``delta = (diag(u) + W W^T)^-1 g``.

All maths is float64. A matrix that should be positive definite but is not is repaired with
jitter and a :class:`CovarianceWarning`, never a crash.
"""

from __future__ import annotations

import math
import warnings
from abc import ABC, abstractmethod
from typing import Any

import pyro.distributions as dist
import torch

from pyro_clip.errors import ConfigError
from pyro_clip.inference.kalman_jacobian import CategoricalKronJacobian, Jacobian
from pyro_clip.inference.posteriors import LowRankPrecisionNormal

DTYPE = torch.float64
COVARIANCES = ("full", "block", "diag", "lowrank", "kron")


class CovarianceWarning(UserWarning):
    """A covariance lost positive definiteness and was repaired with jitter."""


def safe_cholesky(mat: torch.Tensor, what: str = "matrix") -> torch.Tensor:
    """Lower Cholesky factor of (a batch of) symmetric matrices; adds jitter with a warning."""
    mat = 0.5 * (mat + mat.transpose(-1, -2))
    chol, info = torch.linalg.cholesky_ex(mat)
    if not bool((info > 0).any()):
        return chol
    scale = mat.diagonal(dim1=-2, dim2=-1).abs().mean().clamp_min(1e-12)
    eye = torch.eye(mat.shape[-1], dtype=mat.dtype, device=mat.device)
    for exponent in range(-10, 1):
        jitter = float(scale) * 10.0**exponent
        chol, info = torch.linalg.cholesky_ex(mat + jitter * eye)
        if not bool((info > 0).any()):
            warnings.warn(
                f"{what} was not positive definite; added jitter {jitter:.3g} to its diagonal",
                CovarianceWarning,
                stacklevel=3,
            )
            return chol
    # Last resort: clip the spectrum (always succeeds for a finite symmetric matrix).
    evals, evecs = torch.linalg.eigh(mat)
    floor = float(scale) * 1e-8
    warnings.warn(
        f"{what} was far from positive definite; clipped its eigenvalues at {floor:.3g}",
        CovarianceWarning,
        stacklevel=3,
    )
    fixed = (evecs * evals.clamp_min(floor).unsqueeze(-2)) @ evecs.transpose(-1, -2)
    return torch.linalg.cholesky(0.5 * (fixed + fixed.transpose(-1, -2)))


def _eye(m: int, like: torch.Tensor | None = None) -> torch.Tensor:
    """float64 identity on ``like``'s device (the default device without one)."""
    return torch.eye(m, dtype=DTYPE, device=None if like is None else like.device)


def _single_categorical(h: Jacobian) -> bool:
    """One example whitened by the categorical covariance: the O(C) Sherman-Morrison path."""
    return isinstance(h, CategoricalKronJacobian) and h.x.shape[0] == 1


def categorical_gain_terms(
    probs: torch.Tensor, q: torch.Tensor, r: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``M r`` and ``diag M`` for ``M = L (I + L^T Q L)^-1 L^T = (I + F Q)^-1 F`` in O(C).

    One example of a linear head with a per-class-decoupled prior (block/diag structure)
    has innovation ``S = I + L^T Q L``, ``Q = diag(q_c)``, ``q_c = x^T P_c x``,
    ``L L^T = F = diag p - p p^T``; the push-through identity turns ``L^T S^-1 L`` into
    ``(I + F Q)^-1 F`` and ``I + F Q = D - p s^T`` (``D = diag(1 + p q)``, ``s = p q``) is a
    diagonal minus a rank one, inverted by Sherman-Morrison. Replaces the O(C^3) Cholesky of
    the C x C innovation.
    """
    p, q, r = probs.reshape(-1), q.reshape(-1), r.reshape(-1)
    dinv = 1.0 / (1.0 + p * q)
    s = p * q
    a, b = dinv * p, dinv * s
    alpha = 1.0 / (1.0 - (s * a).sum())

    def ainv(v: torch.Tensor) -> torch.Tensor:  # (D - p s^T)^-1 v
        return dinv * v + alpha * a * (b @ v)

    m_r = ainv(p * r - p * (p @ r))
    fb = p * b - p * (p @ b)
    diag_m = dinv * (p - p * p) + alpha * a * fb
    return m_r, diag_m


def _minibatch_categorical(h: Jacobian) -> bool:
    """B >= 2 examples whitened by the categorical covariance: the O(C B^3) Woodbury path."""
    return isinstance(h, CategoricalKronJacobian) and h.x.shape[0] > 1


def categorical_block_gain(
    probs: torch.Tensor, q: torch.Tensor, r: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(M r)_c`` and the class blocks ``M_cc`` of ``M = (I + F Q)^-1 F`` in O(C B^3).

    A minibatch of B categorical examples with a per-class-decoupled prior (block/diag) has,
    in class-major order, ``F = blockdiag_b(diag p_b - p_b p_b^T) = Pi - U U^T`` (``Pi`` =
    diag of the probabilities, U's class block c is ``Pi_c = diag(p_{:,c})``) and
    ``Q = blockdiag_c(Q_c)``, ``Q_c = X P_c X^T`` (B x B). Woodbury on
    ``I + F Q = A - U (Q U)^T`` with ``A_c = I + Pi_c Q_c`` and ``sum_c p_{b,c} = 1`` gives
    ``M_cc' = N_c d_cc' - N_c (sum_k N_k)^-1 N_c'`` with the symmetric
    ``N_c = A_c^-1 Pi_c = Pi_c^1/2 (I + Pi_c^1/2 Q_c Pi_c^1/2)^-1 Pi_c^1/2``: two batched B x B
    Cholesky factorisations instead of the (B C) x (B C) innovation. For B = 1 this is
    :func:`categorical_gain_terms`. probs (B, C), q (C, B, B), r (C, B) -> (C, B), (C, B, B).
    """
    s = probs.to(q).T.sqrt()  # (C, B)
    eye = torch.eye(q.shape[-1], dtype=q.dtype, device=q.device)
    chol = safe_cholesky(eye + s.unsqueeze(-1) * q * s.unsqueeze(-2), "class innovation")
    n_c = s.unsqueeze(-1) * torch.cholesky_solve(torch.diag_embed(s), chol)  # (C, B, B)
    n_c = 0.5 * (n_c + n_c.transpose(1, 2))
    k_chol = safe_cholesky(n_c.sum(0), "class gain sum")
    n_r = (n_c @ r.unsqueeze(-1)).squeeze(-1)  # (C, B)
    m_r = n_r - (n_c @ torch.cholesky_solve(n_r.sum(0).unsqueeze(-1), k_chol)).squeeze(-1)
    m_blocks = n_c - n_c @ torch.cholesky_solve(n_c, k_chol)
    return m_r, 0.5 * (m_blocks + m_blocks.transpose(1, 2))


class Covariance(ABC):
    """Covariance ``P`` of an n-dimensional Gaussian state."""

    kind: str
    n: int

    @abstractmethod
    def quad(self, h: Jacobian) -> torch.Tensor:
        """``H P H^T`` (m, m)."""

    @abstractmethod
    def var(self, h: Jacobian) -> torch.Tensor:
        """``diag(H P H^T)`` (m,) without forming the m x m matrix."""

    @abstractmethod
    def mv(self, v: torch.Tensor) -> torch.Tensor:
        """``P v`` for v (n,)."""

    @abstractmethod
    def update(self, h: Jacobian, g: torch.Tensor) -> torch.Tensor:
        """Add information ``H^T H`` (whitened H); return the mean step ``P+ g`` (see module)."""

    @abstractmethod
    def predict(self, forgetting: float = 1.0, noise: float = 0.0) -> None:
        """Process model of a static parameter: ``P <- P / forgetting + noise I``."""

    @abstractmethod
    def sample(self, n_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Zero-mean draws with covariance ``P`` -> (S, n)."""

    @abstractmethod
    def dense(self) -> torch.Tensor:
        """``P`` as an (n, n) matrix (tests and small problems)."""

    @abstractmethod
    def repair(self) -> None:
        """Check positive definiteness; restore it with jitter and a warning if lost."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Tensors to checkpoint."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (tensors are copied: updates never touch the caller's)."""

    @abstractmethod
    def distribution(self, mean: torch.Tensor) -> torch.distributions.Distribution:
        """``N(mean, P)`` as a Pyro distribution matching the structure (see ``posteriors``)."""

    def memory_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.state_dict().values())

    def diagonal(self) -> torch.Tensor:
        return self.dense().diagonal()


def _randn(shape: tuple[int, ...], generator: torch.Generator | None,
           device: torch.device) -> torch.Tensor:
    """Standard normals drawn where ``generator`` lives (the CPU), then moved to ``device``:
    seeded draws are the same numbers whichever device the covariance is on."""
    where = generator.device if generator is not None else device
    return torch.randn(shape, dtype=DTYPE, generator=generator, device=where).to(device)


def _check_predict(forgetting: float, noise: float, forgetting_only: str | None = None) -> None:
    """Valid process model; ``forgetting_only`` names a structure that cannot add noise."""
    if not 0 < forgetting <= 1 or noise < 0:
        raise ConfigError(
            f"process model needs 0 < forgetting <= 1 and noise >= 0, got {forgetting}, {noise}"
        )
    if forgetting_only and noise:
        raise ConfigError(
            f"the {forgetting_only} covariance supports process noise as forgetting only; "
            "pass process_noise=0 and forgetting < 1 instead"
        )


class FullCovariance(Covariance):
    """Dense ``P`` (n x n); the update never forms the Jacobian densely if it is structured."""

    kind = "full"

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


class DiagCovariance(Covariance):
    """Diagonal ``P`` = diag(d)."""

    kind = "diag"

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


class LowRankCovariance(Covariance):
    """LoFi: precision ``diag(u) + W W^T`` with ``W`` (n, R), covariance by Woodbury."""

    kind = "lowrank"

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
        from pyro_clip.inference.covariance_kron import KronCovariance  # imports this module

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
