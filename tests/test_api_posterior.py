"""``model.posterior()`` of every Kalman structure and of Laplace, in the original feature
space, against the dense covariance (float64) and against moments of its own draws."""

from __future__ import annotations

import pytest
import torch

import pyro_clip as pc
from pyro_clip.errors import ConfigError

NAMES = ["a", "b", "c"]


@pytest.fixture(scope="module")
def feats():
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 6, generator=gen, dtype=torch.float64)
    y = torch.arange(3).repeat(8)
    x = centres[y] + 0.5 * torch.randn(len(y), 6, generator=gen, dtype=torch.float64)
    return pc.Features(x, y, NAMES, text=centres + 0.3 * torch.randn(3, 6, generator=gen,
                                                                      dtype=torch.float64))


def _check(post, mean, cov):
    """mean, variance and log_prob against N(mean, cov) (dense); draws' moments."""
    shape = mean.shape
    torch.testing.assert_close(post.mean, mean, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(post.variance, cov.diagonal().reshape(shape), rtol=1e-7,
                               atol=1e-12)
    ref = torch.distributions.MultivariateNormal(mean.reshape(-1), covariance_matrix=cov)
    torch.manual_seed(1)
    n = 4000
    draws = post.sample((n,))
    assert draws.shape == (n, *shape) and draws.dtype == torch.float64
    torch.testing.assert_close(post.log_prob(draws[:5]), ref.log_prob(draws[:5].reshape(5, -1)),
                               rtol=1e-7, atol=1e-7)
    sd = cov.diagonal().sqrt().reshape(shape)
    assert ((draws.mean(0) - mean).abs() <= 5 * sd / n**0.5).all()
    rel = draws.var(0) / sd**2 - 1
    assert rel.abs().max() < 5 * (2 / n) ** 0.5


@pytest.mark.parametrize(("cov", "extra"), [
    ("full", {}), ("block", {}), ("diag", {}), ("lowrank", {"rank": 4}), ("kron", {}),
    ("full", {"center_inputs": True, "rotate_inputs": True}),
    ("kron", {"center_inputs": True, "rotate_inputs": True}),
])
def test_kalman_posterior_every_structure(feats, cov, extra):
    model = pc.fit("kalman", feats, covariance=cov, prior_var=2.0, seed=1, **extra)
    kal = model.method
    adapter, state = kal.adapter, kal.state
    c, p = adapter.n_classes, adapter.n_in
    m = adapter.to_original()
    m = torch.eye(p, dtype=torch.float64) if m is None else m
    t = torch.kron(torch.eye(c, dtype=torch.float64), m)  # row-wise map on vec (C, P)
    cov_ref = t @ state.cov.dense() @ t.T
    mean_ref = state.mean.reshape(c, p) @ m.T
    _check(model.posterior(), mean_ref, 0.5 * (cov_ref + cov_ref.T))


@pytest.mark.parametrize("structure", ["kron", "diag", "full"])
def test_laplace_posterior_every_structure(feats, structure):
    model = pc.fit("laplace", feats, hessian_structure=structure, lam=0.5, prior_precision=3.0,
                   temperature=1.0)
    la = model.method.la
    if structure == "kron":
        cov = la.posterior_precision.to_matrix(exponent=-1)
    elif structure == "diag":
        cov = torch.diag(la.posterior_variance)
    else:
        cov = la.posterior_covariance
    shape = tuple(model.method.weight.shape)
    _check(model.posterior(), la.mean.detach().reshape(shape), cov.detach().double())


def test_point_estimates_have_no_posterior(feats):
    model = pc.fit("linear-probe", feats, lam=1.0)
    with pytest.raises(ConfigError, match="point estimate"):
        model.posterior()
