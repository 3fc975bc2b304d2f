"""Calibration metrics: ECE (equal-width and equal-mass bins), MCE, class-wise ECE.

Equal-width ECE/MCE and the per-class binary calibration error come from torchmetrics;
equal-mass (adaptive) binning is hand-written because torchmetrics only bins uniformly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torchmetrics.functional.classification import (
    binary_calibration_error,
    multiclass_calibration_error,
)

from pyro_clip.diagnostics.metrics import _check, expected_calibration_error


def _prepare(probs: torch.Tensor, labels: torch.Tensor, bins: int) -> torch.Tensor:
    _check(probs, labels)
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}; 15 is the usual choice")
    return probs.double()


def ece_equal_width(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float:
    """ECE = sum_b |B_b|/N |acc(B_b) - conf(B_b)|, equal-width confidence bins (Guo 2017 eq. 3)."""
    return expected_calibration_error(_prepare(probs, labels, bins), labels, bins)


def maximum_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float:
    """MCE = max_b |acc(B_b) - conf(B_b)| over non-empty equal-width bins (Guo 2017 eq. 5)."""
    probs = _prepare(probs, labels, bins)
    return float(
        multiclass_calibration_error(probs, labels, probs.shape[1], n_bins=bins, norm="max")
    )


def ece_equal_mass(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float:
    """ECE over ``bins`` bins holding (about) equally many examples, sorted by confidence.

    Adaptive ECE of Nixon et al. (2019, sec. 4) / ECE_EM of Roelofs et al. (2022): bin edges
    are confidence quantiles, so sparse high-confidence regions are not averaged away. Tied
    confidences are kept in one bin (the bin of the group's mean sorted position), so the
    value depends only on the multiset of (confidence, correct) pairs, not on row order.
    Hand-written: torchmetrics bins uniformly only.
    """
    probs = _prepare(probs, labels, bins)
    conf, pred = probs.max(-1)
    return equal_mass_gap(conf.numpy(), (pred == labels).double().numpy(), bins)


def equal_mass_gap(conf_np: np.ndarray, correct: np.ndarray, bins: int = 15) -> float:
    """:func:`ece_equal_mass` from each example's confidence and correctness (NumPy)."""
    order = np.argsort(conf_np, kind="stable")
    sorted_conf = conf_np[order]
    n = len(order)
    # equal-mass bin of each sorted position (np.array_split sizes), then one bin per tie group
    chunks = np.array_split(np.arange(n), min(bins, n))
    bin_of_pos = np.concatenate([np.full(len(c), i) for i, c in enumerate(chunks)])
    _, group, group_size = np.unique(sorted_conf, return_inverse=True, return_counts=True)
    mean_pos = np.bincount(group, weights=np.arange(n)) / group_size
    bin_id = bin_of_pos[np.floor(mean_pos).astype(int)][group]
    n_bins = len(chunks)
    gap = (np.bincount(bin_id, weights=correct[order], minlength=n_bins)
           - np.bincount(bin_id, weights=sorted_conf, minlength=n_bins))
    return float(np.abs(gap).sum() / n)


def classwise_ece(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float:
    """Class-wise ECE = (1/C) sum_c sum_b |B_cb|/N |freq_c(B_cb) - mean p_c(B_cb)| (Kull 2019).

    Each class's probability column is binned on its own (equal width), so miscalibration of
    the non-top classes counts too.
    """
    probs = _prepare(probs, labels, bins)
    errors = [
        binary_calibration_error(probs[:, c].contiguous(), (labels == c).long(), n_bins=bins)
        for c in range(probs.shape[1])
    ]
    return float(torch.stack(errors).mean())


@dataclass
class ReliabilityBins:
    """Per bin: edges (B+2,), count, mean confidence and accuracy (NaN if empty), (B+1,).

    Bins ``0..B-1`` are ``[e_b, e_{b+1})``; the last entry is the point bin ``{1.0}`` (edges
    ``1, 1``): torchmetrics' ECE gives confidence exactly 1 a bin of its own, so keeping it
    apart is what makes ``sum_b count_b/N |acc_b - conf_b|`` equal the reported ECE.
    """

    edges: np.ndarray
    count: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray

    @property
    def ece(self) -> float:
        """``sum_b |B_b|/N |acc_b - conf_b|`` (Guo et al. 2017, eq. 3) over non-empty bins."""
        n = self.count.sum()
        return float(np.nansum(self.count / max(n, 1) * np.abs(self.accuracy - self.confidence)))


def reliability_bins(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> ReliabilityBins:
    """Data of a reliability diagram: bin b holds confidences in [e_b, e_{b+1}), plus {1.0}.

    Same binning as torchmetrics' ``multiclass_calibration_error`` (``bucketize(right=True)``
    over ``linspace(0, 1, B+1)``, which puts 1.0 in an extra bin), so ``.ece`` equals it.
    Hand-written because torchmetrics returns only the scalar ECE, not the per-bin values.
    """
    probs = _prepare(probs, labels, bins)
    conf, pred = probs.max(-1)
    conf_np, correct = conf.numpy(), (pred == labels).numpy().astype(float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.searchsorted(edges, conf_np, side="right") - 1, 0, bins)
    count = np.bincount(idx, minlength=bins + 1).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(idx, weights=conf_np, minlength=bins + 1) / count
        acc = np.bincount(idx, weights=correct, minlength=bins + 1) / count
    return ReliabilityBins(np.append(edges, 1.0), count.astype(int), mean_conf, acc)


def calibration_metrics(
    probs: torch.Tensor, labels: torch.Tensor, bins: int = 15
) -> dict[str, float]:
    """The calibration block merged into ``metrics.json`` for one evaluation set."""
    return {
        "ece_equal_width": ece_equal_width(probs, labels, bins),
        "ece_equal_mass": ece_equal_mass(probs, labels, bins),
        "mce": maximum_calibration_error(probs, labels, bins),
        "classwise_ece": classwise_ece(probs, labels, bins),
    }
