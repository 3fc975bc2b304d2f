"""Kalman posteriors as distributions: log_prob against dense MultivariateNormal references,
and posterior predictive sampling through ``pyro.infer.Predictive``."""

from __future__ import annotations

import math

import pytest
import torch
from pyro.infer import Predictive

from pyro_clip.inference.covariance import COVARIANCES, make_covariance
from pyro_clip.inference.kalman import KalmanState
from pyro_clip.inference.kalman_jacobian import KronJacobian
from pyro_clip.inference.posteriors import LowRankPrecisionNormal, MatrixNormal
from pyro_clip.models.bayesian_linear import (
    bayesian_linear_model,
    posterior_guide,
    posterior_predictive,
)

C, P = 3, 4
MVN = torch.distributions.MultivariateNormal


#: references are computed in float64 (fixture in conftest restores the default after)
pytestmark = pytest.mark.usefixtures("float64_default")


def _spd(m, g):
    a = torch.randn(m, m, generator=g)
    return a @ a.T + 0.5 * torch.eye(m)


def test_matrix_normal_log_prob_and_moments_match_dense_mvn():
    g = torch.Generator().manual_seed(0)
    loc = torch.randn(C, P, generator=g)
    u, v = _spd(C, g), _spd(P, g)
    mn = MatrixNormal.from_covariances(loc, u, v)
    ref = MVN(loc.reshape(-1), torch.kron(u, v))
    x = torch.randn(5, C, P, generator=g)
    torch.testing.assert_close(mn.log_prob(x), ref.log_prob(x.reshape(5, -1)))
    torch.testing.assert_close(mn.covariance_matrix, torch.kron(u, v))
    torch.testing.assert_close(mn.variance.reshape(-1), torch.kron(u, v).diagonal())
    # general eigen-variances (the exactly damped Kronecker posterior)
    qr, qc = torch.linalg.qr(torch.randn(C, C, generator=g))[0], torch.linalg.qr(
        torch.randn(P, P, generator=g))[0]
    ev = torch.rand(C, P, generator=g) + 0.1
    gen = MatrixNormal(loc, qr, qc, ev)
    q = torch.kron(qr, qc)
    dense = (q * ev.reshape(-1)) @ q.T
    torch.testing.assert_close(gen.log_prob(x), MVN(loc.reshape(-1), dense).log_prob(
        x.reshape(5, -1)))
    torch.manual_seed(0)
    s = gen.rsample((40000,)).reshape(40000, -1) - loc.reshape(-1)
    emp = s.T @ s / len(s)
    assert (emp - dense).abs().max() < 6 * math.sqrt(2 / 40000) * dense.diagonal().max()


def test_low_rank_precision_normal_matches_dense_mvn():
    g = torch.Generator().manual_seed(1)
    n, r = 7, 2
    loc, u = torch.randn(n, generator=g), torch.rand(n, generator=g) + 0.5
    w = torch.randn(n, r, generator=g)
    prec = torch.diag(u) + w @ w.T
    d = LowRankPrecisionNormal(loc, u, w)
    ref = MVN(loc, precision_matrix=prec)
    x = torch.randn(4, n, generator=g)
    torch.testing.assert_close(d.log_prob(x), ref.log_prob(x))
    torch.testing.assert_close(d.variance, torch.linalg.inv(prec).diagonal())
    torch.manual_seed(1)
    s = d.rsample((40000,)) - loc
    cov = torch.linalg.inv(prec)
    assert ((s.T @ s / len(s)) - cov).abs().max() < 6 * math.sqrt(2 / 40000) * cov.diagonal().max()


def _fitted_state(kind: str) -> KalmanState:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(8, P, generator=g)
    labels = torch.randint(0, C, (8,), generator=g)
    state = KalmanState(torch.randn(C * P, generator=g),
                        make_covariance(kind, C * P, 1.3, n_blocks=C, rank=2))
    for idx in torch.arange(8).split(4):
        w = state.mean.reshape(C, P)
        state.update_categorical(KronJacobian.logits(x[idx], C), x[idx] @ w.T, labels[idx])
    return state


@pytest.mark.parametrize("kind", COVARIANCES)
def test_every_structure_posterior_is_the_dense_gaussian(kind):
    state = _fitted_state(kind)
    post = state.posterior((C, P))
    assert tuple(post.event_shape) == (C, P)
    ref = MVN(state.mean, state.cov.dense())
    w = torch.randn(6, C, P, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(post.log_prob(w), ref.log_prob(w.reshape(6, -1)))
    assert post.rsample((2,)).shape == (2, C, P)
    assert tuple(state.posterior().event_shape) in {(C * P,), (C, P)}


@pytest.mark.parametrize("kind", ["full", "kron"])
def test_predictive_draws_labels_from_the_posterior(kind):
    """Predictive with the posterior as guide: the 'y' site is Categorical(x w^T) for w drawn
    from the posterior, so label frequencies match E_w softmax(x w^T) (MC error)."""
    state = _fitted_state(kind)
    post = state.posterior((C, P))
    x = torch.randn(5, P, generator=torch.Generator().manual_seed(4))
    prior_mean = torch.zeros(C, P)
    s = 400  # Predictive draws guide samples one by one: keep it small
    torch.manual_seed(5)
    out = Predictive(bayesian_linear_model, guide=posterior_guide(post), num_samples=s,
                     return_sites=["w", "y", "_RETURN"])(x, None, prior_mean, 1.0)
    w = out["w"].reshape(s, C, P)  # Predictive keeps a singleton dim for guide sites
    assert out["y"].shape == (s, 5)
    torch.testing.assert_close(out["_RETURN"].reshape(s, 5, C), x @ w.mT)
    freq = torch.nn.functional.one_hot(out["y"], C).double().mean(0)
    ref = posterior_predictive(w, x)
    assert (freq - ref).abs().max() < 5 * math.sqrt(0.25 / s)
    # the same through posterior_samples
    again = Predictive(bayesian_linear_model, posterior_samples={"w": w},
                       return_sites=["y"])(x, None, prior_mean, 1.0)
    assert again["y"].shape == (s, 5)
