"""Calibration, selective-prediction and OOD metrics against hand-computed values."""

import math

import numpy as np
import pytest
import torch

from pyro_clip.diagnostics.calibration import (
    classwise_ece,
    ece_equal_mass,
    ece_equal_width,
    maximum_calibration_error,
    reliability_bins,
)
from pyro_clip.diagnostics.ood import (
    aupr_in,
    aupr_out,
    auroc,
    fpr_at_tpr,
    ood_metrics,
    prediction_scores,
)
from pyro_clip.diagnostics.predictive import predictive_draws
from pyro_clip.diagnostics.selective import risk_coverage, risk_coverage_from_scores

# four examples, two classes: confidences 0.9 (right), 0.8 (wrong), 0.6 (right), 0.55 (wrong)
PROBS = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.45, 0.55]], dtype=torch.float64)
LABELS = torch.tensor([0, 0, 0, 0])


def test_ece_equal_width_and_mce_by_hand():
    # 2 bins [0, .5), [.5, 1]: all four in bin 2: acc 1/2, conf (0.9+0.8+0.6+0.55)/4 = 0.7125
    assert ece_equal_width(PROBS, LABELS, bins=2) == pytest.approx(0.2125)
    assert maximum_calibration_error(PROBS, LABELS, bins=2) == pytest.approx(0.2125)
    # 10 bins: each example alone in its bin -> mean |1[correct] - conf|
    expect = (0.1 + 0.8 + 0.4 + 0.55) / 4
    assert ece_equal_width(PROBS, LABELS, bins=10) == pytest.approx(expect)
    assert maximum_calibration_error(PROBS, LABELS, bins=10) == pytest.approx(0.8)


def test_ece_equal_mass_by_hand():
    # 2 equal-mass bins: sorted confidences {0.55 (w), 0.6 (r)} and {0.8 (w), 0.9 (r)}
    expect = 0.5 * abs(0.5 - 0.575) + 0.5 * abs(0.5 - 0.85)
    assert ece_equal_mass(PROBS, LABELS, bins=2) == pytest.approx(expect)
    # one bin: |acc - mean conf| over everything
    assert ece_equal_mass(PROBS, LABELS, bins=1) == pytest.approx(abs(0.5 - 0.7125))


def test_classwise_ece_by_hand():
    # class 0 column p = (.9, .2, .6, .45), y = 1 for all; 2 bins:
    #   [0, .5): {.2, .45} freq 1, mean .325 -> 2/4 * .675; [.5, 1]: {.9, .6} -> 2/4 * .25
    c0 = 0.5 * 0.675 + 0.5 * 0.25
    # class 1 column p = (.1, .8, .4, .55), y = 0: [0,.5): {.1,.4} mean .25; [.5,1]: {.8,.55} .675
    c1 = 0.5 * 0.25 + 0.5 * 0.675
    assert classwise_ece(PROBS, LABELS, bins=2) == pytest.approx((c0 + c1) / 2)


def test_reliability_bins_match_torchmetrics_ece():
    rb = reliability_bins(PROBS, LABELS, bins=4)  # edges 0, .25, .5, .75, 1
    np.testing.assert_array_equal(rb.count, [0, 0, 2, 2, 0])  # last: the point bin {1.0}
    np.testing.assert_allclose(rb.accuracy[2:4], [0.5, 0.5])
    np.testing.assert_allclose(rb.confidence[2:4], [0.575, 0.85])
    ece = np.nansum(rb.count / 4 * np.abs(rb.accuracy - rb.confidence))
    assert ece == pytest.approx(ece_equal_width(PROBS, LABELS, bins=4))


def test_risk_coverage_and_aurc_by_hand():
    rc = risk_coverage(PROBS, LABELS)  # accept order 0.9 r, 0.8 w, 0.6 r, 0.55 w
    np.testing.assert_allclose(rc.coverage, [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(rc.risk, [0, 1 / 2, 1 / 3, 2 / 4])
    assert rc.aurc == pytest.approx((0 + 0.5 + 1 / 3 + 0.5) / 4)


def test_risk_coverage_ties_are_averaged_over_orderings():
    conf = np.array([0.7, 0.7, 0.3])
    err = np.array([1.0, 0.0, 1.0])
    rc = risk_coverage_from_scores(conf, err)
    # brute force: mean over both orders of the tied pair
    orders = [([1, 0, 1]), ([0, 1, 1])]
    brute = np.mean([np.cumsum(o) / np.arange(1, 4) for o in orders], axis=0)
    np.testing.assert_allclose(rc.risk, brute)


def test_auroc_and_fpr95_by_hand():
    id_s = torch.tensor([0.1, 0.2, 0.3, 0.4])
    ood_s = torch.tensor([0.35, 0.5, 0.6])
    # pairs with ood > id: 0.35 beats 3 of 4; 0.5 and 0.6 beat all -> 11 / 12
    assert auroc(id_s, ood_s) == pytest.approx(11 / 12)
    # keeping >= 95% of ID needs all four (threshold 0.4): OOD accepted = {0.35} -> 1/3
    assert fpr_at_tpr(id_s, ood_s) == pytest.approx(1 / 3)
    # huge scores must not saturate into ties
    assert auroc(id_s * 1e3, ood_s * 1e3) == pytest.approx(11 / 12)
    assert set(ood_metrics({"a": id_s}, {"a": ood_s, "b": ood_s})) == {"a"}


def test_aupr_in_and_out_by_hand_and_against_scikit_learn():
    from sklearn.metrics import average_precision_score

    id_s = torch.tensor([0.1, 0.2, 0.3, 0.4])
    ood_s = torch.tensor([0.35, 0.5, 0.6])
    # OOD positive, ranked by score: 0.6 (hit), 0.5 (hit), 0.4, 0.35 (hit) -> AP = (1 + 1 + 3/4)/3
    assert aupr_out(id_s, ood_s) == pytest.approx((1 + 1 + 0.75) / 3)
    # ID positive, ranked by -score: 0.1, 0.2, 0.3 (hits), 0.35, 0.4 (hit) -> (1+1+1+4/5)/4
    assert aupr_in(id_s, ood_s) == pytest.approx((3 + 0.8) / 4)
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(200, generator=gen), torch.randn(150, generator=gen) + 0.7
    y = np.r_[np.ones(200), np.zeros(150)]
    s = np.r_[a.numpy(), b.numpy()]
    assert aupr_in(a, b) == pytest.approx(average_precision_score(y, -s))
    assert aupr_out(a, b) == pytest.approx(average_precision_score(1 - y, s))
    assert set(ood_metrics({"a": a}, {"a": b})["a"]) == {"auroc", "aupr_in", "aupr_out", "fpr95"}


def test_prediction_scores_by_hand():
    probs = torch.tensor([[0.5, 0.5], [1.0, 0.0]])
    s = prediction_scores(probs)
    np.testing.assert_allclose(s["msp"], [-0.5, -1.0])
    np.testing.assert_allclose(s["entropy"], [math.log(2), 0.0], atol=1e-9)
    # two posterior samples, confident in opposite classes: MI = log 2 - ~0
    logits = torch.tensor([[[20.0, -20.0]], [[-20.0, 20.0]]])
    mi = prediction_scores(torch.full((1, 2), 0.5), logits)["mutual_information"]
    assert float(mi[0]) == pytest.approx(math.log(2), abs=1e-6)


def test_predictive_draws_frequencies_and_loglik():
    probs = torch.tensor([[0.2, 0.8], [0.7, 0.3]], dtype=torch.float64)
    labels = torch.tensor([1, 1])
    d = predictive_draws(probs, labels, ["a", "b"], draws=20000, seed=3)
    assert d.predictive.shape == (20000, 2) and d.logits is None
    np.testing.assert_allclose(d.predictive.mean(0), [0.8, 0.3], atol=0.015)
    np.testing.assert_allclose(d.log_likelihood[0], np.log([0.8, 0.3]))
    again = predictive_draws(probs, labels, ["a", "b"], draws=20000, seed=3)
    np.testing.assert_array_equal(d.predictive, again.predictive)


def test_predictive_draws_from_logit_samples():
    logits = torch.tensor([[[0.0, math.log(3.0)]], [[math.log(3.0), 0.0]]])  # p1 = .75, .25
    d = predictive_draws(torch.full((1, 2), 0.5), torch.tensor([1]), ["a", "b"], logits)
    np.testing.assert_allclose(d.log_likelihood[:, 0], np.log([0.75, 0.25]), rtol=1e-6)
    assert d.predictive.shape == (2, 1) and d.logits.shape == (2, 1, 2)
    with pytest.raises(ValueError, match="logit_samples must be"):
        predictive_draws(torch.full((2, 2), 0.5), torch.tensor([1, 0]), ["a", "b"], logits)


def test_bad_bins_and_scores_are_rejected():
    with pytest.raises(ValueError, match="bins must be"):
        ece_equal_mass(PROBS, LABELS, bins=0)
    with pytest.raises(ValueError, match="1-d"):
        auroc(torch.zeros(2, 2), torch.zeros(3))


def test_reliability_bins_give_confidence_one_its_own_bin_like_torchmetrics():
    """Issue 11 defect 3: conf = 1.0 has its own bin in torchmetrics' ECE (0.280, not 0.220)."""
    from torchmetrics.functional.classification import multiclass_calibration_error

    probs = torch.tensor([[1, 0, 0], [1, 0, 0], [.94, .03, .03], [.94, .03, .03]],
                         dtype=torch.float64)
    labels = torch.tensor([0, 1, 0, 0])
    rb = reliability_bins(probs, labels, bins=15)
    reference = float(multiclass_calibration_error(probs, labels, 3, n_bins=15))
    assert reference == pytest.approx(0.28)
    assert rb.ece == pytest.approx(reference, rel=1e-6)  # torchmetrics returns float32
    assert rb.count[-1] == 2 and rb.count.sum() == 4 and len(rb.edges) == len(rb.count) + 1
    # random float64 predictions with some exact ones: bins agree with torchmetrics too
    gen = torch.Generator().manual_seed(0)
    p = torch.randn(300, 5, generator=gen, dtype=torch.float64).mul(3).softmax(-1)
    p[:40] = torch.nn.functional.one_hot(torch.arange(40) % 5, 5).double()
    y = torch.randint(0, 5, (300,), generator=gen)
    for bins in (1, 4, 15):
        rb = reliability_bins(p, y, bins)
        ref = float(multiclass_calibration_error(p, y, 5, n_bins=bins))
        assert rb.ece == pytest.approx(ref, rel=1e-5, abs=1e-7)


def test_ece_equal_mass_is_invariant_to_row_order():
    """Issue 11 defect 4: tied confidences must not be split across bins by row order."""
    n = 60
    labels = torch.arange(n) % 3
    constant = torch.full((n, 3), 1 / 3, dtype=torch.float64)  # accuracy 1/3, confidence 1/3
    constant[:, 0] += 1e-3
    constant[:, 1:] -= 5e-4
    values = set()
    for seed in range(6):
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        values.add(round(ece_equal_mass(constant[perm], labels[perm], bins=15), 15))
    assert len(values) == 1
    # the constant predictor sits in one bin: |acc - conf| exactly
    assert values.pop() == pytest.approx(abs(1 / 3 - (1 / 3 + 1e-3)), rel=1e-9)
    # mixed ties: a permutation of rows leaves the value unchanged
    gen = torch.Generator().manual_seed(1)
    conf = torch.tensor([0.5, 0.7, 0.9])[torch.randint(0, 3, (90,), generator=gen)].double()
    probs = torch.stack([conf, 1 - conf], 1)
    y = torch.randint(0, 2, (90,), generator=gen)
    base = ece_equal_mass(probs, y, bins=4)
    for seed in range(5):
        perm = torch.randperm(90, generator=torch.Generator().manual_seed(seed))
        assert ece_equal_mass(probs[perm], y[perm], bins=4) == pytest.approx(base, rel=1e-12)
    # without ties it is the plain equal-mass ECE (brute force over np.array_split)
    p = torch.rand(50, generator=gen, dtype=torch.float64) * 0.5 + 0.5
    probs, y = torch.stack([p, 1 - p], 1), torch.randint(0, 2, (50,), generator=gen)
    order = np.argsort(p.numpy())
    correct = (y.numpy() == 0).astype(float)
    brute = sum(len(c) * abs(correct[c].mean() - p.numpy()[c].mean())
                for c in np.array_split(order, 7)) / 50
    assert ece_equal_mass(probs, y, bins=7) == pytest.approx(brute, rel=1e-12)
