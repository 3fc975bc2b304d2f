"""Pyro-native posteriors: OVE-PG's model/guide under ``pyro.infer.Predictive``, the shared
categorical model, and ``az.loo`` / ``az.compare`` on a problem with a known ranking."""

from __future__ import annotations

import numpy as np
import pyro.distributions
import pytest
import torch
from pyro import poutine
from pyro.infer import Predictive

from pyro_clip.diagnostics import arviz_io
from pyro_clip.diagnostics.predictive import predictive_draws
from pyro_clip.models.categorical import logit_model, posterior_predictive
from pyro_clip.models.ove_pg import (
    OvePGConfig,
    draw_omega,
    ove_differences,
    ove_pg_guide,
    ove_pg_model,
    ove_pg_posterior_guide,
    ove_pg_posterior_predictive,
)


def test_ove_differences_broadcast_over_sample_dimensions():
    f = torch.randn(5, 4, 3, dtype=torch.float64)
    y = torch.tensor([0, 2, 1, 1])
    batched = ove_differences(f, y)
    assert batched.shape == (5, 4, 2)
    for s in range(5):
        torch.testing.assert_close(batched[s], ove_differences(f[s], y), rtol=0, atol=0)


def test_ove_pg_posterior_predictive_is_the_gaussian_over_logits():
    """q(f|x) = N(f_learner, alpha^-1 I): sample moments within Monte Carlo error."""
    cfg = OvePGConfig(alpha=4.0)
    gen = torch.Generator().manual_seed(0)
    f, f0 = torch.randn(6, 3, generator=gen), torch.randn(6, 3, generator=gen)
    torch.manual_seed(1)
    out = Predictive(ove_pg_model, guide=ove_pg_posterior_guide, num_samples=8000,
                     parallel=True, return_sites=("f", "y"))(f, f0, None, None, cfg)
    draws, ys = out["f"].reshape(8000, 6, 3), out["y"].reshape(8000, 6)
    # mean: sd 0.5/sqrt(8000) = 0.0056 per entry; variance 0.25 with sd 0.25*sqrt(2/8000)=0.004
    torch.testing.assert_close(draws.mean(0), f, atol=0.03, rtol=0)
    torch.testing.assert_close(draws.var(0), torch.full((6, 3), 0.25), atol=0.03, rtol=0)
    # y ~ Cat(softmax f) per draw: label frequencies = E_q softmax(f) (binomial sd <= 0.0056)
    freq = torch.nn.functional.one_hot(ys, 3).double().mean(0)
    torch.testing.assert_close(freq, draws.double().softmax(-1).mean(0), atol=0.03, rtol=0)
    # prior predictive: centred at the zero-shot logits
    # the helper: prior predictive centred at the zero-shot logits
    prior = ove_pg_posterior_predictive(f, f0, cfg, 300, seed=2, prior=True)
    assert prior["f"].shape == (300, 6, 3) and prior["y"].shape == (300, 6)
    torch.testing.assert_close(prior["f"].mean(0), f0, atol=0.15, rtol=0)  # 5 sd of 0.029


def test_ove_pg_training_model_has_an_observed_y_site():
    cfg = OvePGConfig()
    f, f0 = torch.randn(4, 3, requires_grad=True), torch.randn(4, 3)
    y = torch.tensor([0, 1, 2, 0])
    omega = draw_omega(f0, y, "mean", np.random.default_rng(0))
    guide = poutine.trace(ove_pg_guide).get_trace(f, f0, y, omega, cfg)
    model = poutine.trace(poutine.replay(ove_pg_model, trace=guide)).get_trace(
        f, f0, y, omega, cfg)
    site = model.nodes["y"]
    assert site["is_observed"] and torch.equal(site["value"], y)


def test_shared_categorical_model_under_predictive():
    gen = torch.Generator().manual_seed(3)
    mean = torch.randn(5, 4, generator=gen, dtype=torch.float64)
    cov = torch.eye(4, dtype=torch.float64) * 0.5 + 0.2
    q = pyro.distributions.MultivariateNormal(mean, cov)
    out = posterior_predictive(q, 6000, seed=0)
    assert out["f"].shape == (6000, 5, 4) and out["y"].shape == (6000, 5)
    torch.testing.assert_close(out["f"].mean(0), mean, atol=0.04, rtol=0)
    emp_cov = torch.einsum("sni,snj->nij", out["f"] - mean, out["f"] - mean) / 6000
    torch.testing.assert_close(emp_cov, cov.expand(5, 4, 4), atol=0.05, rtol=0)
    again = posterior_predictive(q, 6000, seed=0)
    assert torch.equal(again["y"], out["y"])  # seeded
    trace = poutine.trace(logit_model).get_trace(q, torch.zeros(5, dtype=torch.long))
    assert trace.nodes["y"]["is_observed"]
    with pytest.raises(ValueError, match="event shape"):
        logit_model(pyro.distributions.Normal(mean, 1.0))
    with pytest.raises(TypeError, match=r"pyro\.distributions"):
        logit_model(torch.distributions.MultivariateNormal(mean, cov))


def _loo_idata(logits: torch.Tensor, labels: torch.Tensor, seed: int):
    fit = predictive_draws(logits.softmax(-1).mean(0), labels, ["a", "b", "c"], logits, seed=seed)
    return arviz_io.to_inference_data(fit, {}, method="synthetic")


def test_loo_and_compare_rank_the_model_that_generated_the_data_first():
    """Softmax regression: labels from W_true; 'good' posterior draws around W_true, 'flat'
    around 0.3 W_true (too uncertain a fit), 'wrong' around a class-permuted W_true."""
    rng = np.random.default_rng(0)
    n, d, s = 300, 5, 400
    x = torch.from_numpy(rng.normal(size=(n, d)))
    w_true = torch.from_numpy(rng.normal(size=(3, d)) * 1.5)
    p = (x @ w_true.T).softmax(-1).numpy()
    labels = torch.from_numpy((rng.random(n)[:, None] > p.cumsum(-1)).sum(-1).clip(0, 2))

    def draws(center: torch.Tensor) -> torch.Tensor:
        w = center + 0.05 * torch.from_numpy(rng.normal(size=(s, 3, d)))
        return torch.einsum("nd,scd->snc", x, w)

    runs = {"good": _loo_idata(draws(w_true), labels, 0),
            "flat": _loo_idata(draws(0.3 * w_true), labels, 1),
            "wrong": _loo_idata(draws(w_true[[1, 2, 0]]), labels, 2)}
    table = arviz_io.compare(runs)
    assert list(table.index) == ["good", "flat", "wrong"]
    assert table.loc["flat", "elpd_diff"] > 4 * table.loc["flat", "dse"]
    loo = arviz_io.loo(runs["good"], pointwise=True)
    # a tight posterior (sd 0.05 on 15 weights): few effective parameters, reliable PSIS
    assert 0 < loo.p_loo < 15 and (loo.pareto_k.values < 0.7).all()
    assert loo.elpd_loo == pytest.approx(float(np.log(p[np.arange(n), labels.numpy()]).sum()),
                                         abs=3.0)
    with pytest.raises(ValueError, match="same training labels"):
        arviz_io.compare({"good": runs["good"],
                          "other": _loo_idata(draws(w_true), (labels + 1) % 3, 3)})
