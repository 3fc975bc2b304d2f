"""``pc.evaluate(...).ppc``: the posterior predictive checks in full, tested against labels
drawn from the model itself (a PPC must pass) and from another model (it must fail)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import pyro_clip as pc

N, C, D = 600, 5, 16


@pytest.fixture(scope="module")
def zero_shot():
    """A zero-shot model on random tensors (no backbone) and its predictive probabilities."""
    g = torch.Generator().manual_seed(0)
    x, text = torch.randn(N, D, generator=g), torch.randn(C, D, generator=g)
    names = [f"c{i}" for i in range(C)]
    model = pc.fit("zero-shot", pc.Features(x, torch.zeros(N, dtype=torch.long), names,
                                            text=text), logit_scale=8.0)
    probs = model.predict(x).double()
    return model, x, text, names, probs, g


def _evaluate(model, x, text, names, labels):
    return pc.evaluate(model, pc.Features(x, labels, names, text=text), draws=400, seed=3)


def test_labels_from_the_model_pass_its_checks(zero_shot):
    model, x, text, names, probs, g = zero_shot
    labels = torch.multinomial(probs, 1, generator=g).squeeze(1)
    result = _evaluate(model, x, text, names, labels)
    acc = result.ppc["test"]["accuracy"]
    # observed discrepancy: plain top-1 accuracy of the predictive mean
    assert acc.observed == pytest.approx(float((probs.argmax(-1) == labels).double().mean()))
    # replicates: labels drawn from the predictive, so their mean accuracy is the expected
    # accuracy mean_i max_c p_ic, within Monte Carlo error
    expected = float(probs.max(-1).values.mean())
    assert acc.replicated.shape == (400,)
    assert acc.replicated.mean() == pytest.approx(expected, abs=4 * acc.replicated.std() / 20)
    # p-value: the mid-p share of replicates at or above the observation, by brute force
    rep = acc.replicated
    assert acc.p_value == pytest.approx(((rep > acc.observed).sum()
                                         + 0.5 * (rep == acc.observed).sum()) / rep.size)
    for check in ("accuracy", "log_score"):
        assert 0.01 <= result.ppc["test"][check].p_value <= 0.99, check
    # the summary in metrics is these checks' p-values
    assert result.metrics["test"]["ppc"]["p_accuracy"] == acc.p_value


def test_labels_from_another_model_fail_its_checks(zero_shot):
    model, x, text, names, probs, _ = zero_shot
    # labels the model finds least likely: observed accuracy and log score far below every
    # replicate (an over-confident model), so P(T(y*) >= T(y)) = 1
    result = _evaluate(model, x, text, names, probs.argmin(-1))
    assert result.ppc["test"]["accuracy"].observed == 0.0
    for check in ("accuracy", "log_score"):
        assert result.ppc["test"][check].p_value == 1.0, check
    assert np.isfinite(result.ppc["test"]["log_score"].replicated).all()
