"""Selective prediction: the risk-coverage curve and its area (AURC, Geifman & El-Yaniv 2017).

Hand-written: torchmetrics has no risk-coverage metric. Ties in confidence are resolved by
their expectation over random tie-breaking, so the result does not depend on input order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pyro_clip.diagnostics.metrics import _check


@dataclass
class RiskCoverage:
    """``coverage[k-1] = k/N`` and ``risk[k-1]`` = error rate of the k most confident examples."""

    coverage: np.ndarray
    risk: np.ndarray

    @property
    def aurc(self) -> float:
        """AURC = (1/N) sum_k risk(k/N), the area under the risk-coverage curve."""
        return float(self.risk.mean())


def risk_coverage_from_scores(confidence: np.ndarray, errors: np.ndarray) -> RiskCoverage:
    """Risk-coverage curve when examples are accepted in order of decreasing ``confidence``.

    Within a block of equal confidence the errors are spread evenly (their expectation under a
    random order): risk(k) = (E_before + (k - n_before) * e_block / n_block) / k.
    """
    confidence = np.asarray(confidence, dtype=float)
    errors = np.asarray(errors, dtype=float)
    if confidence.shape != errors.shape or confidence.ndim != 1 or confidence.size == 0:
        raise ValueError("confidence and errors must be equal-length non-empty 1-d arrays")
    n = confidence.size
    _, inverse, block_size = np.unique(-confidence, return_inverse=True, return_counts=True)
    block_err = np.bincount(inverse, weights=errors)
    ends = np.cumsum(block_size)
    starts = ends - block_size
    err_before = np.cumsum(block_err) - block_err
    k = np.arange(1, n + 1)
    block = np.searchsorted(ends, k, side="left")  # block holding the k-th accepted example
    cum_err = err_before[block] + (k - starts[block]) * block_err[block] / block_size[block]
    return RiskCoverage(k / n, cum_err / k)


def risk_coverage(probs: torch.Tensor, labels: torch.Tensor) -> RiskCoverage:
    """Risk-coverage of the max-softmax-probability selector (0-1 loss)."""
    _check(probs, labels)
    conf, pred = probs.double().max(-1)
    return risk_coverage_from_scores(conf.numpy(), (pred != labels).numpy())


def selective_metrics(probs: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """AURC, the optimal AURC for the same errors, and E-AURC = AURC - optimal (Geifman 2019)."""
    curve = risk_coverage(probs, labels)
    errors = (probs.argmax(-1) != labels).numpy().astype(float)
    # the oracle accepts every correct example first: confidence = 1 - error
    optimal = risk_coverage_from_scores(1.0 - errors, errors).aurc
    return {"aurc": curve.aurc, "aurc_optimal": optimal, "e_aurc": curve.aurc - optimal}
