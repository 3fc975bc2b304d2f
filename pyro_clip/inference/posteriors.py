"""The Kalman posterior over the weights as a Pyro/torch distribution matching its structure.

``full`` -> ``MultivariateNormal``; ``block`` -> a batch of per-block ``MultivariateNormal``
(event (K, n/K), i.e. (C, P) for the linear head); ``diag`` -> independent ``Normal``;
``lowrank`` -> :class:`LowRankPrecisionNormal` (LoFi keeps the *precision* as ``diag(u) + W W^T``,
whose covariance is a low-rank *downdate* of a diagonal, which torch's
``LowRankMultivariateNormal`` (diagonal plus a positive low-rank term) cannot express);
``kron`` -> :class:`MatrixNormal`. Both new distributions are Pyro ``TorchDistribution``s,
so they work as guide sites in :class:`pyro.infer.Predictive`. Hand-written because neither
torch nor Pyro ships a matrix normal or a precision-form low-rank normal.
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from torch.distributions import constraints

_LOG_2PI = math.log(2 * math.pi)


class MatrixNormal(dist.TorchDistribution):
    """Gaussian over (R, S) matrices whose covariance is diagonal in a Kronecker eigenbasis.

    ``vec(X - M) = (Q_r kron Q_c) diag(v)^(1/2) vec(E)``, ``E`` standard normal, with
    orthogonal ``Q_r`` (R, R), ``Q_c`` (S, S) and eigen-variances ``v`` (R, S), row-major vec.
    The matrix normal ``MN(M, U, V)`` (covariance ``U kron V``; Gupta & Nagar 1999, def. 2.2.1)
    is the case ``v = outer(eig U, eig V)`` (:meth:`from_covariances`); the exactly damped
    Kronecker posterior ``(A kron G + tau I)^-1`` is ``v = 1 / (outer(a, g) + tau)``.
    ``log p(X) = -1/2 |Z|^2 - 1/2 sum log v - RS/2 log 2 pi``,
    ``Z = Q_r^T (X - M) Q_c / sqrt v``.
    """

    arg_constraints = {"loc": constraints.real, "eigen_var": constraints.positive}  # noqa: RUF012
    support = constraints.real
    has_rsample = True

    def __init__(
        self,
        loc: torch.Tensor,
        row_basis: torch.Tensor,
        col_basis: torch.Tensor,
        eigen_var: torch.Tensor,
        validate_args: bool | None = None,
    ) -> None:
        if loc.shape != eigen_var.shape or loc.ndim != 2:
            raise ValueError(f"loc and eigen_var must both be (R, S), got {loc.shape}, "
                             f"{eigen_var.shape}")
        self.loc, self.row_basis, self.col_basis, self.eigen_var = (
            loc, row_basis, col_basis, eigen_var)
        super().__init__(torch.Size(), loc.shape, validate_args=validate_args)

    @classmethod
    def from_covariances(
        cls, loc: torch.Tensor, row_cov: torch.Tensor, col_cov: torch.Tensor
    ) -> MatrixNormal:
        """``MN(M, U, V)``: ``vec(X) ~ N(vec(M), U kron V)`` (U among rows, V among columns)."""
        ur, qr = torch.linalg.eigh(row_cov)
        uc, qc = torch.linalg.eigh(col_cov)
        return cls(loc, qr, qc, torch.outer(ur, uc))

    @property
    def mean(self) -> torch.Tensor:
        return self.loc

    @property
    def variance(self) -> torch.Tensor:
        return (self.row_basis**2) @ self.eigen_var @ (self.col_basis**2).T

    @property
    def covariance_matrix(self) -> torch.Tensor:
        """Dense (RS, RS) covariance (small problems and tests only)."""
        q = torch.kron(self.row_basis, self.col_basis)
        return (q * self.eigen_var.reshape(-1)) @ q.T

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:  # noqa: B008
        shape = torch.Size(sample_shape) + self.loc.shape
        eps = torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device)
        return self.loc + self.row_basis @ (eps * self.eigen_var.sqrt()) @ self.col_basis.T

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        z = self.row_basis.T @ (value - self.loc) @ self.col_basis
        maha = (z * z / self.eigen_var).sum((-2, -1))
        return -0.5 * (maha + self.eigen_var.log().sum() + self.loc.numel() * _LOG_2PI)


class LowRankPrecisionNormal(dist.TorchDistribution):
    """``N(loc, (diag(u) + W W^T)^-1)`` (LoFi's precision form), never forming n x n.

    log-density by the matrix determinant lemma,
    ``log det(diag u + W W^T) = sum log u + log det(I + W^T diag(u)^-1 W)``; draws as
    ``Lambda^-1 (sqrt(u) e1 + W e2)`` (covariance ``Lambda^-1 Lambda Lambda^-1``) by Woodbury.
    """

    arg_constraints = {"loc": constraints.real, "prec_diag": constraints.positive}  # noqa: RUF012
    support = constraints.real
    has_rsample = True

    def __init__(
        self, loc: torch.Tensor, prec_diag: torch.Tensor, prec_factor: torch.Tensor,
        validate_args: bool | None = None,
    ) -> None:
        self.loc, self.prec_diag, self.prec_factor = loc, prec_diag, prec_factor
        g = prec_factor / prec_diag[:, None]
        cap = torch.eye(prec_factor.shape[1], dtype=loc.dtype, device=loc.device)
        self._g, self._cap_chol = g, torch.linalg.cholesky(cap + prec_factor.T @ g)
        super().__init__(torch.Size(), loc.shape, validate_args=validate_args)

    @property
    def mean(self) -> torch.Tensor:
        return self.loc

    def _solve(self, v: torch.Tensor) -> torch.Tensor:
        """``Lambda^-1 v`` for v (..., n) by Woodbury."""
        inner = torch.cholesky_solve((v @ self._g).unsqueeze(-1), self._cap_chol).squeeze(-1)
        return v / self.prec_diag - inner @ self._g.T

    @property
    def variance(self) -> torch.Tensor:
        hg = torch.linalg.solve_triangular(self._cap_chol, self._g.T, upper=False)
        return 1.0 / self.prec_diag - (hg * hg).sum(0)

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:  # noqa: B008
        shape = torch.Size(sample_shape)
        kw = {"dtype": self.loc.dtype, "device": self.loc.device}
        e1 = torch.randn(shape + self.loc.shape, **kw)
        e2 = torch.randn((*shape, self.prec_factor.shape[1]), **kw)
        return self.loc + self._solve(e1 * self.prec_diag.sqrt() + e2 @ self.prec_factor.T)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        d = value - self.loc
        maha = (d * d * self.prec_diag).sum(-1) + ((d @ self.prec_factor) ** 2).sum(-1)
        logdet = self.prec_diag.log().sum() + 2 * self._cap_chol.diagonal().log().sum()
        return -0.5 * (maha - logdet + self.loc.numel() * _LOG_2PI)


class EventReshape(dist.TorchDistribution):
    """``base`` with its event reshaped to ``event_shape`` (row-major, log-det 0).

    Unlike a ``TransformedDistribution`` with a ``ReshapeTransform`` it keeps the base's
    moments: ``mean`` and ``variance`` are the base's, reshaped.
    """

    arg_constraints: dict = {}  # noqa: RUF012
    support = constraints.real

    def __init__(
        self, base: torch.distributions.Distribution, event_shape: tuple[int, ...],
        validate_args: bool | None = None,
    ) -> None:
        if math.prod(event_shape) != math.prod(base.event_shape):
            raise ValueError(f"cannot reshape event {tuple(base.event_shape)} to {event_shape}")
        self.base = base
        super().__init__(base.batch_shape, torch.Size(event_shape), validate_args=validate_args)

    @property
    def has_rsample(self) -> bool:  # type: ignore[override]
        return self.base.has_rsample

    def _out(self, value: torch.Tensor) -> torch.Tensor:
        return value.reshape(*value.shape[: value.ndim - len(self.base.event_shape)],
                             *self.event_shape)

    @property
    def mean(self) -> torch.Tensor:
        return self._out(self.base.mean)

    @property
    def variance(self) -> torch.Tensor:
        return self._out(self.base.variance)

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:  # noqa: B008
        return self._out(self.base.rsample(sample_shape))

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:  # noqa: B008
        return self._out(self.base.sample(sample_shape))

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        lead = value.shape[: value.ndim - len(self.event_shape)]
        return self.base.log_prob(value.reshape(*lead, *self.base.event_shape))


def reshape_event(d: torch.distributions.Distribution, shape: tuple[int, ...]):
    """The same distribution with its event reshaped to ``shape`` (:class:`EventReshape`)."""
    if tuple(d.event_shape) == tuple(shape):
        return d
    return EventReshape(d, tuple(shape))


def _unwrap(d: torch.distributions.Distribution) -> torch.distributions.Distribution:
    """The distribution under ``EventReshape`` / ``Independent`` wrappers."""
    while isinstance(d, EventReshape | torch.distributions.Independent):
        d = d.base if isinstance(d, EventReshape) else d.base_dist
    return d


def row_map_variance(
    base: torch.distributions.Distribution, matrix: torch.Tensor
) -> torch.Tensor:
    """``Var[(X M^T)_{r i}] = m_i^T Sigma_rr m_i`` (R, S) for a Gaussian ``X`` with event
    (R, S), where ``Sigma_rr`` is row r's covariance, without forming the (RS)^2 covariance
    unless the structure stores it (full): diagonal ``sum_j M_ij^2 v_rj``; low-rank precision
    ``Sigma = D^-1 - A A^T`` with ``A = D^-1 W L^-T`` (Woodbury, ``L L^T = I + W^T D^-1 W``);
    Kronecker eigenbasis ``(Q_r^2) v ((M Q_c)^2)^T``; dense blocks ``einsum(M, Sigma_rr, M)``.
    """
    rows, cols = base.event_shape
    inner = _unwrap(base)
    if isinstance(inner, MatrixNormal):
        return (inner.row_basis**2) @ inner.eigen_var @ ((matrix @ inner.col_basis) ** 2).T
    if isinstance(inner, torch.distributions.Normal):
        return inner.variance.reshape(rows, cols) @ (matrix**2).T
    if isinstance(inner, LowRankPrecisionNormal):
        a = torch.linalg.solve_triangular(inner._cap_chol, inner._g.T, upper=False).T
        low = torch.einsum("rsk,is->rik", a.reshape(rows, cols, -1), matrix)
        return (1.0 / inner.prec_diag).reshape(rows, cols) @ (matrix**2).T - (low**2).sum(-1)
    if isinstance(inner, torch.distributions.MultivariateNormal):
        cov = inner.covariance_matrix
        if cov.ndim == 2:  # one (RS, RS) matrix: take its diagonal (S, S) row blocks
            cov = cov.reshape(rows, cols, rows, cols).diagonal(dim1=0, dim2=2).permute(2, 0, 1)
        return torch.einsum("is,rst,it->ri", matrix, cov.reshape(rows, cols, cols), matrix)
    raise NotImplementedError(
        f"variance of a row-mapped {type(inner).__name__} is not implemented; use "
        "posterior(basis='fitted') or draw samples")


class RowLinearMap(dist.TorchDistribution):
    """The distribution of ``Y = X M^T`` for ``X ~ base`` with event (R, S) and ``M`` (S, S)
    invertible: each row is mapped ``y_r = M x_r``. A Gaussian stays Gaussian with mean
    ``E[X] M^T`` and row covariances ``M Sigma_rr' M^T``;
    ``log p(Y) = log p_base(Y M^-T) - R log|det M|`` (change of variables). Used to hand back
    the linear head's posterior in the original weight basis when it was fitted on centred or
    rotated inputs (:meth:`~pyro_clip.inference.kalman_adapters.LinearHead.to_original`).
    ``base_mean`` (R, S) is the base's mean where the base does not expose one (a reshaped
    ``TransformedDistribution``).
    """

    arg_constraints: dict = {}  # noqa: RUF012
    support = constraints.real
    has_rsample = True

    def __init__(
        self, base: torch.distributions.Distribution, matrix: torch.Tensor,
        base_mean: torch.Tensor | None = None, validate_args: bool | None = None,
    ) -> None:
        if len(base.event_shape) != 2 or matrix.shape != (base.event_shape[1],) * 2:
            raise ValueError(f"need a base with event (R, S) and M (S, S); got "
                             f"{tuple(base.event_shape)}, {tuple(matrix.shape)}")
        self.base, self.matrix, self._base_mean = base, matrix, base_mean
        self._lu = torch.linalg.lu_factor(matrix)
        self._log_det = base.event_shape[0] * torch.linalg.slogdet(matrix).logabsdet
        super().__init__(base.batch_shape, base.event_shape, validate_args=validate_args)

    @property
    def mean(self) -> torch.Tensor:
        base_mean = self.base.mean if self._base_mean is None else self._base_mean
        return base_mean @ self.matrix.T

    @property
    def variance(self) -> torch.Tensor:
        return row_map_variance(self.base, self.matrix)

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:  # noqa: B008
        return self.base.rsample(sample_shape) @ self.matrix.T

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        # X^T = M^-1 Y^T, i.e. rows x_r = M^-1 y_r
        x = torch.linalg.lu_solve(*self._lu, value.transpose(-2, -1)).transpose(-2, -1)
        return self.base.log_prob(x) - self._log_det
