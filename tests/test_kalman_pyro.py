"""The Kalman posterior of the Bayesian linear head against Pyro's NUTS on the same model."""

from __future__ import annotations

import pyro
import pytest
import torch
from pyro.infer import MCMC, NUTS

from pyro_clip.inference.covariance import FullCovariance
from pyro_clip.inference.kalman import KalmanState, probit_probs
from pyro_clip.inference.kalman_jacobian import KronJacobian
from pyro_clip.models.bayesian_linear import bayesian_linear_model, posterior_predictive


@pytest.mark.slow  # NUTS: about 20 s of CPU on an idle 2-core machine
def test_ekf_predictive_close_to_nuts_posterior_predictive():
    gen = torch.Generator().manual_seed(0)
    n, c, prior_var = 30, 3, 1.0
    centres = 0.5 * torch.tensor([[2.0, 0.0], [-1.0, 1.7], [-1.0, -1.7]])
    labels = torch.arange(n) % c
    x = centres[labels] + torch.randn(n, 2, generator=gen)
    inputs = torch.cat([x, torch.ones(n, 1)], 1).double()
    prior_mean = torch.zeros(c, 3, dtype=torch.float64)

    state = KalmanState(prior_mean.reshape(-1), FullCovariance(c * 3, prior_var))
    for idx in torch.arange(n).split(1):
        w = state.mean.reshape(c, 3)
        state.update_categorical(KronJacobian.logits(inputs[idx], c), inputs[idx] @ w.T,
                                 labels[idx])

    pyro.set_rng_seed(0)
    mcmc = MCMC(NUTS(bayesian_linear_model, max_tree_depth=4), num_samples=150, warmup_steps=100,
                disable_progbar=True)
    mcmc.run(inputs, labels, prior_mean, prior_var)
    draws = mcmc.get_samples()["w"]

    # test inputs from the data distribution (fresh draws)
    test_labels = torch.arange(60) % c
    grid = (centres[test_labels] + torch.randn(60, 2, generator=gen)).double()
    test_in = torch.cat([grid, torch.ones(len(grid), 1, dtype=torch.float64)], 1)
    ref = posterior_predictive(draws, test_in)
    jac = KronJacobian.logits(test_in, c)
    mean = test_in @ state.mean.reshape(c, 3).T
    ekf = probit_probs(mean, state.cov.var(jac).reshape(len(grid), c))
    # One sequential pass linearises each label once, so it is approximate: require it to be
    # close in absolute terms and far closer than the prior predictive (uniform here).
    err = (ekf - ref).abs()
    prior_err = (ref - 1.0 / c).abs().mean()
    assert err.max() < 0.15 and err.mean() < 0.05, (err.max(), err.mean())
    assert err.mean() < 0.25 * prior_err
    # posterior means within a fraction of NUTS's posterior standard deviation
    z = (state.mean.reshape(c, 3) - draws.mean(0)).abs() / draws.std(0)
    assert z.max() < 0.75, z
