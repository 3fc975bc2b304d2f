"""The Monte Carlo posterior predictive every Bayesian method reports, and its calibration.

With logit draws ``f_s(x)`` from a method's posterior (s = 1..S), the posterior predictive is
``p(y | x, D) = 1/S sum_s softmax(f_s(x) / T)_y`` (BDA3 eq. 1.4 with the integral by Monte
Carlo); the same draws give the PPC replicates ``y*_s ~ Cat(softmax(f_s / T))`` and the
pointwise log-likelihoods, so probabilities, checks, LOO and OOD scores agree by construction.
``T`` is a likelihood temperature chosen on validation data (never on test): the grid value
with the smallest validation NLL of this predictive (:func:`choose_temperature`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

#: temperatures tried by default (log-spaced, 1 included)
TEMPERATURE_GRID: tuple[float, ...] = (0.1, 0.15, 0.25, 0.35, 0.5, 0.7, 1.0, 1.4, 2.0)


def mc_probs(logit_samples: torch.Tensor) -> torch.Tensor:
    """``1/S sum_s softmax(f_s)``: (S, N, C) logit draws -> (N, C) probabilities (float64)."""
    return logit_samples.double().softmax(-1).mean(0)


def mc_log_predictive(logit_samples: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``log 1/S sum_s softmax(f_s)_{y_i}`` per example (N,), by log-sum-exp."""
    logp = logit_samples.double().log_softmax(-1)
    idx = labels.to(logp.device)
    picked = logp[:, torch.arange(logp.shape[1], device=logp.device), idx]  # (S, N)
    return torch.logsumexp(picked, 0) - math.log(logp.shape[0])


def choose_temperature(
    logit_samples: torch.Tensor, labels: torch.Tensor,
    grid: Sequence[float] = TEMPERATURE_GRID,
) -> tuple[float, dict[str, float]]:
    """The grid temperature minimising the validation NLL ``-mean_i log p(y_i | x_i, D)`` of
    the predictive with draws ``f_s / T``; returns it and the NLL of every grid value."""
    if not grid or any(t <= 0 for t in grid):
        raise ValueError(f"temperature grid must be non-empty and positive, got {list(grid)}")
    nlls = {str(float(t)): float(-mc_log_predictive(logit_samples / t, labels).mean())
            for t in grid}
    best = min(nlls, key=lambda k: (nlls[k], abs(math.log(float(k)))))
    return float(best), nlls
