"""The Kalman adapter's generative model written in Pyro: ``W ~ N(W0, s0 I)``, ``y ~ Cat(W x)``.

The extended Kalman filter of :mod:`pyro_clip.inference.kalman` approximates the posterior of
this model in one sequential pass; written as a Pyro model, the same posterior can be
computed by Pyro's own inference (NUTS, SVI) and compared (see ``tests/test_kalman_pyro.py``).
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch


def bayesian_linear_model(
    x: torch.Tensor, y: torch.Tensor | None, prior_mean: torch.Tensor, prior_var: float
) -> torch.Tensor:
    """Multinomial logistic regression with a Gaussian prior centred on ``prior_mean`` (C, P).

    ``x`` (N, P) are the inputs (normalised features, plus a ones column for a bias);
    returns the logits (N, C).
    """
    scale = torch.full_like(prior_mean, prior_var**0.5)
    w = pyro.sample("w", dist.Normal(prior_mean, scale).to_event(2))
    logits = x @ w.T
    with pyro.plate("data", x.shape[0]):
        pyro.sample("y", dist.Categorical(logits=logits), obs=y)
    return logits


def posterior_guide(posterior: torch.distributions.Distribution):
    """A guide for :func:`bayesian_linear_model` drawing ``w`` from a fitted posterior, e.g.
    ``KalmanState.posterior((C, P))``: ``pyro.infer.Predictive(bayesian_linear_model,
    guide=posterior_guide(post), num_samples=S)(x, None, prior_mean, prior_var)["y"]``."""

    def guide(*args, **kwargs) -> None:
        pyro.sample("w", posterior)

    return guide


def posterior_predictive(weight_samples: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``p(y | x, D) = E_w[softmax(W x)]`` from posterior draws (S, C, P) -> (N, C)."""
    return torch.softmax(torch.einsum("np,scp->snc", x, weight_samples), -1).mean(0)
