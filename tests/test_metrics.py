import math

import pytest
import torch

from pyro_clip.diagnostics.metrics import (
    accuracy,
    brier_score,
    classification_metrics,
    expected_calibration_error,
    harmonic_mean,
    negative_log_likelihood,
    per_class_accuracy,
)

# three examples, two classes; hand-computed references below
PROBS = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]], dtype=torch.float64)
LABELS = torch.tensor([0, 1, 1])


def test_accuracy_and_per_class():
    assert accuracy(PROBS, LABELS) == pytest.approx(2 / 3)
    assert per_class_accuracy(PROBS, LABELS) == pytest.approx([1.0, 0.5])


def test_nll_by_hand():
    expect = -(math.log(0.9) + math.log(0.4) + math.log(0.7)) / 3
    assert negative_log_likelihood(PROBS, LABELS) == pytest.approx(expect)


def test_brier_by_hand():
    expect = ((0.1**2 + 0.1**2) + (0.6**2 + 0.6**2) + (0.3**2 + 0.3**2)) / 3
    assert brier_score(PROBS, LABELS) == pytest.approx(expect)


def test_ece_by_hand_with_15_bins():
    # confidences 0.9 (correct), 0.6 (wrong), 0.7 (correct) fall in three different bins
    expect = (abs(1 - 0.9) + abs(0 - 0.6) + abs(1 - 0.7)) / 3
    assert expected_calibration_error(PROBS, LABELS) == pytest.approx(expect, abs=1e-6)


def test_harmonic_mean():
    assert harmonic_mean(0.8, 0.6) == pytest.approx(2 * 0.8 * 0.6 / 1.4)
    assert harmonic_mean(0.0, 0.0) == 0.0


def test_bad_shapes_and_nan_are_rejected():
    with pytest.raises(ValueError, match="probs must be"):
        classification_metrics(PROBS, LABELS[:2])
    with pytest.raises(ValueError, match="NaN"):
        classification_metrics(PROBS * float("nan"), LABELS)
