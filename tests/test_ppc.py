"""Posterior predictive checks of p(y | x): pass when the model generated the labels, fail when
the model is over-confident or confuses two classes (simulated both ways)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pyro_clip.diagnostics.calibration import reliability_bins
from pyro_clip.diagnostics.ppc import bayesian_p_value, calibration_ppc, ppc_checks, ppc_summary
from pyro_clip.diagnostics.predictive import predictive_draws

N, C, S = 1500, 5, 400


def simulate(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """True logits (N, C) and labels drawn from them (NumPy RNG: same on every machine)."""
    rng = np.random.default_rng(seed)
    logits = torch.from_numpy(rng.normal(size=(N, C)) * 2.0)
    p = logits.softmax(-1).numpy()
    u = rng.random(N)[:, None]
    labels = torch.from_numpy((u > p.cumsum(-1)).sum(-1).clip(0, C - 1))
    return logits, labels


def checks_for(logits: torch.Tensor, labels: torch.Tensor, seed: int) -> dict:
    probs = logits.softmax(-1)
    draws = predictive_draws(probs, labels, [str(c) for c in range(C)], draws=S, seed=seed)
    return ppc_checks(probs, draws)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ppc_passes_for_the_model_that_generated_the_labels(seed):
    logits, labels = simulate(seed)
    checks = checks_for(logits, labels, seed)
    for name in ("calibration", "accuracy", "log_score"):
        assert 0.01 < checks[name].p_value < 0.99, (name, checks[name].p_value)
        # the observed value is inside the replicated range, not pinned at an extreme
        rep = checks[name].replicated
        assert rep.min() < checks[name].observed < rep.max()
    assert ppc_summary(checks)["p_recall_min_two_sided"] > 0.01 / C


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ppc_fails_for_an_over_confident_model(seed):
    logits, labels = simulate(seed)
    checks = checks_for(3.0 * logits, labels, seed)  # temperature 1/3: too sharp
    assert checks["calibration"].p_value < 0.01
    assert checks["accuracy"].p_value > 0.99  # observed accuracy below what it promises
    assert checks["log_score"].p_value > 0.99


def test_ppc_recall_flags_two_confused_classes():
    logits, labels = simulate(4)
    wrong = logits.clone()
    wrong[:, [0, 1]] = logits[:, [1, 0]]  # the model swaps classes 0 and 1
    checks = checks_for(wrong, labels, 4)
    assert checks["recall_0"].p_value > 0.99 and checks["recall_1"].p_value > 0.99
    assert 0.01 < checks["recall_3"].p_value < 0.99
    assert ppc_summary(checks)["p_recall_min_two_sided"] < 0.01


def test_calibration_ppc_observed_is_the_torchmetrics_binning_ece():
    logits, labels = simulate(5)
    probs = (2 * logits).softmax(-1)
    draws = predictive_draws(probs, labels, [str(c) for c in range(C)], draws=20, seed=0)
    result, per_bin = calibration_ppc(probs, draws, bins=10)
    assert result.observed == pytest.approx(reliability_bins(probs, labels, 10).ece, rel=1e-12)
    np.testing.assert_array_equal(per_bin.count, reliability_bins(probs, labels, 10).count)
    assert per_bin.replicated.shape == (20, 11)


def test_bayesian_p_value_counts_ties_half():
    assert bayesian_p_value(1.0, np.array([0.0, 1.0, 2.0, 3.0])) == pytest.approx(0.625)
    assert np.isnan(bayesian_p_value(1.0, np.array([np.nan])))


@pytest.mark.parametrize("seed", [0, 1])
def test_class_frequency_passes_for_the_true_model_and_fails_for_a_biased_one(seed):
    logits, labels = simulate(seed)
    assert 0.01 < checks_for(logits, labels, seed)["class_frequency"].p_value < 0.99
    biased = logits.clone()
    biased[:, 0] += 1.5  # the model over-predicts class 0
    assert checks_for(biased, labels, seed)["class_frequency"].p_value < 0.01


def test_side_by_side_ppc_of_a_calibrated_and_a_misspecified_model():
    from pyro_clip.diagnostics.ppc import ppc_side_by_side

    logits, labels = simulate(5)
    names = [str(c) for c in range(C)]
    models = {}
    for label, f in (("calibrated", logits), ("prior variance too small", 0.2 * logits)):
        probs = f.softmax(-1)
        models[label] = (probs, predictive_draws(probs, labels, names, draws=S, seed=5))
    fig, pvals = ppc_side_by_side(models)
    assert len(fig.axes) == 6  # one row of three panels per model
    assert 0.01 < pvals["calibrated"]["p_accuracy"] < 0.99
    assert pvals["prior variance too small"]["p_accuracy"] < 0.01  # under-confident
