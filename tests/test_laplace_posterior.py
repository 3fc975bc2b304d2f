"""Laplace head as Pyro-native distributions: its GLM predictive as a MultivariateNormal runs
through the shared categorical model's Predictive; prior = zero-shot logits with variance 1/P."""

from __future__ import annotations

import pyro.distributions
import torch
import torch.nn.functional as F

from pyro_clip.models.categorical import posterior_predictive
from tests.test_baselines import NAMES, _fit, problem  # noqa: F401  (problem is a fixture)


def test_laplace_predictive_and_prior(tiny_backbone, problem):  # noqa: F811
    m = _fit("laplace", tiny_backbone, problem, hessian_structure="full", prior_precision=3.0,
             n_samples=4)
    x = problem["test"].features["joint"][:6]
    names = [*NAMES, "ship"]  # an untrained class: its posterior row is its prior
    mean, cov = m.predictive(x, names)
    q = pyro.distributions.MultivariateNormal(mean, cov)
    prior = m.logit_prior(x, names)
    zs = F.normalize(x.double(), dim=-1) @ (
        tiny_backbone.logit_scale * m.ctx.text_classifier(names).double()).T
    t = m.temperature  # the prior is pushed through the predictive's temperature too
    torch.testing.assert_close(prior.mean, zs / t, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(prior.variance, torch.full_like(zs, 1 / (m.precision * t**2)),
                               rtol=1e-12, atol=0)
    draws = posterior_predictive(q, 3000, seed=0)
    sd = cov.diagonal(dim1=1, dim2=2).sqrt()
    assert ((draws["f"].mean(0) - mean).abs() < 5 * sd / 3000 ** 0.5 + 1e-9).all()
