"""Tempered categorical EKF updates (``weight``, ``tempered_passes``) against a dense
natural-gradient reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pyro_clip.errors import ConfigError
from pyro_clip.inference.covariance import DiagCovariance, FullCovariance
from pyro_clip.inference.kalman import KalmanState
from pyro_clip.inference.kalman_jacobian import DenseJacobian, KronJacobian
from pyro_clip.methods import MethodContext, create_method
from tests.test_kalman_method import NAMES, _synthetic

C, P = 3, 5


def _problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, P, generator=g, dtype=torch.float64)
    labels = torch.randint(0, C, (4,), generator=g)
    m0 = 0.3 * torch.randn(C * P, generator=g, dtype=torch.float64)
    return x, labels, m0


@pytest.mark.parametrize("dense", [False, True])
@pytest.mark.parametrize("weight", [1.0, 0.5, 0.2])
def test_tempered_step_is_the_natural_gradient_step_of_the_powered_likelihood(weight, dense):
    """``p(y|w)^a``: ``P+ = (P^-1 + a J^T F J)^-1``, ``m+ = m + P+ a J^T (y - p)`` (dense
    reference built from the per-example Fisher ``diag p - p p^T``)."""
    x, labels, m0 = _problem()
    prior_var = 2.0
    state = KalmanState(m0.clone(), FullCovariance(C * P, prior_var))
    logits = x @ m0.reshape(C, P).T
    kron = KronJacobian.logits(x, C)
    jac = DenseJacobian(kron.dense()) if dense else kron
    state.update_categorical(jac, logits, labels, weight=weight)
    j = kron.dense()  # (B C, C P), rows (b, c)
    probs = torch.softmax(logits, -1)
    fisher = torch.block_diag(*[torch.diag(p) - torch.outer(p, p) for p in probs])
    precision = torch.eye(C * P, dtype=torch.float64) / prior_var + weight * j.T @ fisher @ j
    cov = torch.linalg.inv(precision)
    grad = weight * j.T @ (F.one_hot(labels, C).double() - probs).reshape(-1)
    torch.testing.assert_close(state.cov.dense(), cov, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(state.mean, m0 + cov @ grad, rtol=1e-9, atol=1e-12)


def test_tempered_diag_step_keeps_the_diagonal_of_the_tempered_update():
    x, labels, m0 = _problem(1)
    full = KalmanState(m0.clone(), FullCovariance(C * P, 1.5))
    diag = KalmanState(m0.clone(), DiagCovariance(C * P, 1.5))
    for i in range(len(x)):  # single examples: diag's Sherman-Morrison path
        for state in (full, diag):
            state.mean = m0.clone()
            state.update_categorical(KronJacobian.logits(x[i : i + 1], C),
                                     x[i : i + 1] @ m0.reshape(C, P).T, labels[i : i + 1],
                                     weight=0.5)
        torch.testing.assert_close(diag.cov.diagonal(), full.cov.diagonal(), rtol=1e-9,
                                   atol=1e-12)
        full.cov, diag.cov = FullCovariance(C * P, 1.5), DiagCovariance(C * P, 1.5)
    with pytest.raises(ValueError, match="weight"):
        full.update_categorical(KronJacobian.logits(x, C), x @ m0.reshape(C, P).T, labels,
                                weight=0.0)


def test_tempered_passes_option(tiny_backbone):
    ctx = MethodContext(tiny_backbone, seed=3, progress=False)
    train, val = _synthetic(ctx, NAMES), _synthetic(ctx, NAMES, 2, seed=1)
    fitted = {}
    for passes in ("auto", 1, 2):
        m = create_method("kalman", prior_var=10.0, covariance="diag",
                          tempered_passes=passes).setup(ctx)
        m.fit(train, val)
        fitted[passes] = m
    assert fitted["auto"].selected["tempered_passes"] == 2
    torch.testing.assert_close(fitted["auto"].state.mean, fitted[2].state.mean, rtol=0, atol=0)
    assert float((fitted[1].state.mean - fitted[2].state.mean).abs().max()) > 1e-6
    with pytest.raises(ConfigError, match="tempered_passes"):
        create_method("kalman", tempered_passes=0)
    with pytest.raises(ConfigError, match="tempered_passes"):
        create_method("kalman", tempered_passes=2, observation="cosine")
