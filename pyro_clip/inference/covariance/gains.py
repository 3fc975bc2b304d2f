"""Categorical-observation gain terms shared by the structured Kalman updates."""

from __future__ import annotations

import torch

from pyro_clip.inference.covariance.base import (
    safe_cholesky,
)
from pyro_clip.inference.kalman_jacobian import CategoricalKronJacobian, Jacobian


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


