"""Classification metrics reported in every run's ``metrics.json``.

Accuracy and expected calibration error come from torchmetrics; NLL and the multiclass Brier
score are one line each (torchmetrics has no multiclass Brier score) and written here.
"""

from __future__ import annotations

import math

import torch
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_calibration_error,
)

EPS = 1e-12


def _check(probs: torch.Tensor, labels: torch.Tensor) -> None:
    if probs.ndim != 2 or labels.ndim != 1 or probs.shape[0] != labels.shape[0]:
        raise ValueError(
            f"probs must be (N, C) and labels (N,), got {tuple(probs.shape)} and "
            f"{tuple(labels.shape)}"
        )
    if not torch.isfinite(probs).all():
        raise ValueError("probs contain NaN or inf; check the method's predictions")


def accuracy(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy (micro average)."""
    _check(probs, labels)
    return float(
        multiclass_accuracy(probs, labels, num_classes=probs.shape[1], average="micro")
    )


def per_class_accuracy(probs: torch.Tensor, labels: torch.Tensor) -> list[float]:
    """Recall of each class; NaN for classes absent from ``labels``."""
    _check(probs, labels)
    pred = probs.argmax(-1)
    out = []
    for c in range(probs.shape[1]):
        mask = labels == c
        out.append(float((pred[mask] == c).float().mean()) if mask.any() else math.nan)
    return out


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float:
    """ECE = sum_b |B_b|/N |acc(B_b) - conf(B_b)| over equal-width confidence bins (Guo 2017)."""
    _check(probs, labels)
    return float(
        multiclass_calibration_error(probs, labels, num_classes=probs.shape[1], n_bins=bins)
    )


def negative_log_likelihood(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean ``-log p(y_i | x_i)``."""
    _check(probs, labels)
    return float(-probs[torch.arange(len(labels)), labels].clamp_min(EPS).log().mean())


def brier_score(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over examples of ``sum_c (p_c - 1[y=c])^2`` (Brier 1950, multiclass form)."""
    _check(probs, labels)
    onehot = torch.nn.functional.one_hot(labels, probs.shape[1]).to(probs.dtype)
    return float(((probs - onehot) ** 2).sum(-1).mean())


def classification_metrics(probs: torch.Tensor, labels: torch.Tensor) -> dict[str, object]:
    """The standard block of ``metrics.json`` for one evaluation set."""
    probs = probs.double()
    return {
        "n": int(len(labels)),
        "accuracy": accuracy(probs, labels),
        "per_class_accuracy": per_class_accuracy(probs, labels),
        "ece": expected_calibration_error(probs, labels),
        "nll": negative_log_likelihood(probs, labels),
        "brier": brier_score(probs, labels),
    }


def harmonic_mean(base: float, new: float) -> float:
    """H = 2 b n / (b + n), the base-to-new summary of CoCoOp (Zhou et al. 2022)."""
    return 0.0 if base + new == 0 else 2 * base * new / (base + new)
