"""Adapters over frozen image features whose weights a Kalman filter tracks.

* :class:`LinearHead`: ``z = W x + b`` with ``x`` the normalised image feature; prior mean
  ``W0 = s T`` (zero-shot text classifier times the logit scale), ``b0 = 0``, so the prior
  mean predicts exactly the zero-shot logits. Its logit Jacobian is ``I_C kron [x, 1]^T``
  (:class:`KronJacobian`); parameter blocks are classes.
* :class:`ResidualAdapter`: CLIP-Adapter-style bottleneck on the image feature,
  ``x' = x + a U relu(V x)``, ``z = s cos(x', t_c)``. It is class-agnostic (transfers to unseen
  classes). Parameters are laid out per bottleneck unit k as ``[V_k, U_:k]`` (blocks = units);
  its Jacobian is computed with ``torch.func.jacrev`` (dense, n = 2 D r parameters).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F

from pyro_clip.inference.covariance import DTYPE
from pyro_clip.inference.kalman_jacobian import DenseJacobian, Jacobian, KronJacobian


class FilteredHead(ABC):
    """The head whose parameters the Kalman filter tracks: maps parameters ``theta`` (n,) and
    features ``x`` (B, D) to logits (B, C), with the Jacobian the filter observes through."""

    n_params: int
    n_blocks: int

    @abstractmethod
    def prior_mean(self) -> torch.Tensor:
        """Parameters of the zero-shot model (n,)."""

    @abstractmethod
    def logits(self, theta: torch.Tensor, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """(B, C) logits for features x (B, D) and class texts (C, D)."""

    @abstractmethod
    def jacobian(self, theta: torch.Tensor, x: torch.Tensor, text: torch.Tensor) -> Jacobian:
        """Jacobian of the flattened logits (B C rows) with respect to ``theta``."""


class LinearHead(FilteredHead):
    """``z = W x + b`` initialised from the zero-shot classifier; ``theta = vec([W, b])``."""

    def __init__(
        self, text: torch.Tensor, scale: float, bias: bool = True,
        center: torch.Tensor | None = None, rotation: torch.Tensor | None = None,
    ) -> None:
        """``center`` (D,): inputs ``x - mu`` (mu = mean training feature) with the bias
        prior mean ``s t_c . mu``, so the prior mean logits are still zero-shot CLIP but the
        inputs lose their common component (which the diagonal structure cannot represent).

        ``rotation`` U (D, D) orthogonal: inputs ``U^T (x - mu)`` and prior mean rows
        ``s t_c^T U``, so the prior logits are unchanged and the prior ``N(W0 U, s0 I)`` is
        the image of ``N(W0, s0 I)`` under ``W -> W U`` (an isotropic Gaussian is invariant
        under orthogonal maps): the posterior of ``full``, ``block`` and ``kron`` is exactly
        the rotated original one, while ``diag`` and ``lowrank``'s diagonal approximate the
        information in the basis U (see :func:`principal_axes`)."""
        self.n_classes, self.dim = text.shape
        self.scale, self.bias = float(scale), bias
        self.center = None if center is None else center.to(DTYPE)
        self.rotation = None if rotation is None else rotation.to(DTYPE)
        if self.center is not None and not bias:
            raise ValueError("centred inputs need the bias column (it carries s t_c . mu)")
        if self.rotation is not None and self.rotation.shape != (self.dim, self.dim):
            raise ValueError(f"rotation must be ({self.dim}, {self.dim}), got "
                             f"{tuple(self.rotation.shape)}")
        self.n_in = self.dim + int(bias)
        self.n_params, self.n_blocks = self.n_classes * self.n_in, self.n_classes
        self.text = text.to(DTYPE)

    def class_prior_mean(self, text: torch.Tensor) -> torch.Tensor:
        """Rows ``[s t_c, 0]`` for any class list (unseen classes keep these)."""
        w = self.scale * F.normalize(text.to(DTYPE), dim=-1)
        if self.bias:
            b = (torch.zeros(len(w), 1, dtype=DTYPE) if self.center is None
                 else w @ self.center[:, None])
        if self.rotation is not None:
            w = w @ self.rotation
        return torch.cat([w, b], 1) if self.bias else w

    def to_original(self) -> torch.Tensor | None:
        """``M`` (P, P) with ``[w, b] = M [w', b']`` per class row, mapping the head's
        parameters (inputs ``U^T (x - mu)``) to those of ``z = W x + b`` on the normalised
        features: ``w = U w'``, ``b = b' - mu^T U w'``. ``det M = det U = +-1``, so densities
        carry over unchanged. ``None`` when the inputs are not transformed."""
        if self.center is None and self.rotation is None:
            return None
        dev = self.text.device
        u = torch.eye(self.dim, dtype=DTYPE, device=dev) if self.rotation is None else self.rotation
        if not self.bias:
            return u
        m = torch.zeros(self.n_in, self.n_in, dtype=DTYPE, device=dev)
        m[: self.dim, : self.dim] = u
        m[self.dim, self.dim] = 1.0
        if self.center is not None:
            m[self.dim, : self.dim] = -(self.center @ u)
        return m

    def prior_mean(self) -> torch.Tensor:
        return self.class_prior_mean(self.text).reshape(-1)

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(x.to(DTYPE), dim=-1)
        if self.center is not None:
            x = x - self.center
        if self.rotation is not None:
            x = x @ self.rotation
        return torch.cat([x, torch.ones(len(x), 1, dtype=DTYPE)], 1) if self.bias else x

    def logits(self, theta: torch.Tensor, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return self.inputs(x) @ theta.reshape(-1, self.n_in).T

    def jacobian(self, theta: torch.Tensor, x: torch.Tensor, text: torch.Tensor) -> Jacobian:
        return KronJacobian.logits(self.inputs(x), self.n_classes)


def principal_axes(x: torch.Tensor, center: torch.Tensor | None) -> torch.Tensor:
    """Orthogonal U (D, D) whose columns are the eigenvectors of the (centred) second moment
    ``(1/N) sum_i (x_i - mu)(x_i - mu)^T`` of the normalised features, by decreasing
    eigenvalue; ``eigh`` fills the null space (N < D) with an orthonormal basis. In this basis
    the inputs' second moment is diagonal, which is what a diagonal structure can represent."""
    x = F.normalize(x.to(DTYPE), dim=-1)
    if center is not None:
        x = x - center.to(x)
    _, u = torch.linalg.eigh(x.T @ x / len(x))
    return u.flip(-1)


class ResidualAdapter(FilteredHead):
    """``x' = x + ratio * U relu(V x)``; ``z = s cos(x', t_c)`` for any class texts."""

    def __init__(
        self, dim: int, scale: float, rank: int = 4, ratio: float = 1.0, seed: int = 0
    ) -> None:
        self.dim, self.rank, self.scale, self.ratio = dim, rank, float(scale), ratio
        self.n_params, self.n_blocks = 2 * dim * rank, rank
        gen = torch.Generator().manual_seed(seed)
        # V starts at a random projection (He-style scale), U at zero: the prior mean is
        # exactly the zero-shot model.
        self._v0 = torch.randn(rank, dim, generator=gen, dtype=DTYPE,
                               device=gen.device) * (2.0 / dim) ** 0.5

    def prior_mean(self) -> torch.Tensor:
        v0 = self._v0.to(torch.get_default_device())  # drawn on the CPU, used where the mean is
        return torch.cat([v0, torch.zeros_like(v0)], 1).reshape(-1)

    def features(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        units = theta.reshape(self.rank, 2 * self.dim)
        v, u = units[:, : self.dim], units[:, self.dim :]  # V (r, D); U^T (r, D)
        x = F.normalize(x.to(DTYPE), dim=-1)
        return x + self.ratio * torch.relu(x @ v.T) @ u

    def logits(self, theta: torch.Tensor, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        feats = F.normalize(self.features(theta, x), dim=-1)
        return self.scale * feats @ F.normalize(text.to(DTYPE), dim=-1).T

    def jacobian(self, theta: torch.Tensor, x: torch.Tensor, text: torch.Tensor) -> Jacobian:
        jac = torch.func.jacrev(lambda t: self.logits(t, x, text))(theta.to(DTYPE))
        return DenseJacobian(jac.reshape(-1, self.n_params))
