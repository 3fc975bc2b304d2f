"""Iterated posterior linearisation (``iterations``): the full filter's fixed point is the MAP
and its covariance the inverse Hessian there, checked against L-BFGS and autograd."""

from __future__ import annotations

import pytest
import torch

from pyro_clip.errors import ConfigError
from pyro_clip.methods import MethodContext, create_method
from tests.test_kalman_method import NAMES, _synthetic

PRIOR_VAR = 10.0


def _fit(ctx, cov, iterations, tol=0.01):
    m = create_method("kalman", covariance=cov, prior_var=PRIOR_VAR, temperature=1.0,
                      prior_scale=ctx.backbone.logit_scale, iterations=iterations,
                      iteration_tol=tol, mc_samples=50, rank=4).setup(ctx)
    m.fit(_synthetic(ctx, NAMES, noise=1.5), _synthetic(ctx, NAMES, 2, seed=1))
    return m


def _neg_log_posterior(m, inputs, labels):
    """``||theta - mu0||^2 / (2 v) - sum_i log softmax(W x_i)_{y_i}`` in the fitted basis."""
    mu0 = m.adapter.prior_mean().double()
    c, p = m.adapter.n_classes, m.adapter.n_in

    def f(theta):
        logits = inputs @ theta.reshape(c, p).T
        return (0.5 * ((theta - mu0) ** 2).sum() / PRIOR_VAR
                - logits.log_softmax(-1).gather(1, labels[:, None]).sum())
    return f, mu0


def test_full_filter_iterates_to_the_map_and_its_laplace_covariance(tiny_backbone):
    ctx = MethodContext(tiny_backbone, seed=3, progress=False)
    m = _fit(ctx, "full", iterations=30, tol=1e-9)
    train = _synthetic(ctx, NAMES, noise=1.5)
    inputs = m.adapter.inputs(train.features["joint"].double())
    f, mu0 = _neg_log_posterior(m, inputs, train.labels)
    theta = mu0.clone().requires_grad_(True)  # independent optimiser: L-BFGS from the prior
    opt = torch.optim.LBFGS([theta], lr=1, max_iter=500, tolerance_grad=1e-12,
                            tolerance_change=1e-15, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = f(theta)
        loss.backward()
        return loss
    opt.step(closure)
    map_ = theta.detach()
    assert m.selected["iterations_run"][str(PRIOR_VAR)] < 30  # converged, stopped early
    torch.testing.assert_close(m.state.mean, map_, atol=1e-6, rtol=1e-6)
    hess = torch.autograd.functional.hessian(f, map_)
    torch.testing.assert_close(m.state.cov.p, torch.linalg.inv(hess), atol=1e-8, rtol=1e-5)
    single = _fit(ctx, "full", iterations=1)
    assert float(f(single.state.mean)) > float(f(map_)) + 1e-3  # one EKF pass is not the MAP


@pytest.mark.parametrize("cov", ["block", "diag", "kron"])
def test_structured_iterations_raise_the_posterior_density(tiny_backbone, cov):
    ctx = MethodContext(tiny_backbone, seed=3, progress=False)
    train = _synthetic(ctx, NAMES, noise=1.5)
    one, three = _fit(ctx, cov, 1), _fit(ctx, cov, 3)
    inputs = one.adapter.inputs(train.features["joint"].double())
    f, _ = _neg_log_posterior(one, inputs, train.labels)
    assert float(f(three.state.mean)) < float(f(one.state.mean))
    assert torch.isfinite(three.predict(train.features["joint"], NAMES).probs).all()


def test_iterations_need_the_categorical_observation_and_not_lowrank(tiny_backbone):
    with pytest.raises(ConfigError, match="iterations > 1 needs observation=categorical"):
        create_method("kalman", observation="cosine", iterations=2)
    # LoFi's truncated-precision step is no Gauss-Newton step: relinearising lowered the
    # posterior density on this problem, so lowrank refuses it and auto takes one pass
    with pytest.raises(ConfigError, match="lowrank takes one filter pass"):
        create_method("kalman", covariance="lowrank", iterations=3)
    ctx = MethodContext(tiny_backbone, seed=3, progress=False)
    m = _fit(ctx, "lowrank", "auto")
    assert m.selected["iterations_run"] == {str(PRIOR_VAR): 1}
    assert _fit(ctx, "full", "auto").selected["iterations_run"][str(PRIOR_VAR)] > 1
