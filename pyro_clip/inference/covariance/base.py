"""The covariance interface every structure implements, and the float64 helpers they share.

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

Each structure also carries its own policy as class attributes and class methods: what the
``auto`` settings of the Kalman method mean for it (input centring, rotation, tempered passes,
minibatch size), how much memory its state takes, and how it is built from the method's
options. A structure is one module in this package registered with
:func:`~pyro_clip.inference.covariance.registry.register_covariance`.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from pyro_clip.errors import ConfigError
from pyro_clip.inference.kalman_jacobian import Jacobian

DTYPE = torch.float64


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


class Covariance(ABC):
    """Covariance ``P`` of an n-dimensional Gaussian state, with the structure's policy.

    Policy (class attributes, read by the Kalman method when an option is ``auto``):
    ``center_inputs`` / ``rotate_inputs`` say whether a linear head should run on centred /
    principal-axis rotated inputs for this structure, ``tempered_passes`` how many tempered
    passes a categorical observation takes, ``iterations`` how many posterior linearisation
    passes it may take, :meth:`auto_batch_size` the minibatch size;
    :meth:`estimate_bytes` sizes the state before it is allocated and :meth:`from_options`
    builds it.
    """

    #: the ``covariance=`` name
    kind: ClassVar[str]
    #: position among the ``covariance=`` choices (listings, error messages)
    order: ClassVar[int] = 100
    #: ``center_inputs=auto``: centre a linear head's inputs
    center_inputs: ClassVar[bool] = False
    #: ``rotate_inputs=auto``: rotate a linear head's inputs into their principal axes
    rotate_inputs: ClassVar[bool] = False
    #: ``tempered_passes=auto`` with a categorical observation
    tempered_passes: ClassVar[int] = 1
    #: ``iterations=auto`` with a categorical observation: at most this many posterior
    #: linearisation passes (each a Gauss-Newton step through the structure's update)
    iterations: ClassVar[int] = 5
    #: ``covariance=auto`` takes the lowest-ranked structure whose state fits the budget
    #: (``None``: never chosen automatically)
    auto_rank: ClassVar[int | None] = None
    n: int

    # ----- policy ----------------------------------------------------------------------------
    @classmethod
    def auto_batch_size(cls, n_classes: int) -> int:
        """``batch_size=auto``: the generic categorical innovation is (B C) x (B C), so
        ``clamp(160 // C, 1, 16)`` examples (16 at 10 classes, 1 from 100 classes)."""
        return max(1, min(16, 160 // max(n_classes, 1)))

    @classmethod
    @abstractmethod
    def estimate_bytes(cls, n: int, n_blocks: int = 1, rank: int = 10) -> int:
        """float64 bytes of the state for ``n`` parameters in ``n_blocks`` classes, before
        allocating it."""

    @classmethod
    @abstractmethod
    def from_options(cls, n: int, prior_var: float, n_blocks: int,
                     options: Mapping[str, Any]) -> Covariance:
        """The prior ``prior_var * I`` over ``n`` parameters (``n_blocks`` classes); the
        structure reads its own settings (``rank``, ...) from the method's ``options``."""

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> None:
        """Raise :class:`ConfigError` for method options this structure cannot honour."""

    # ----- the filter's operations ---------------------------------------------------------
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


