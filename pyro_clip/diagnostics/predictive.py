"""Posterior predictive label draws and pointwise log-likelihoods from a ``Prediction``.

With posterior logit samples ``f_s`` (S, N, C): ``y*_s ~ Cat(softmax f_s)`` and
``log p(y_i | f_s) = log_softmax(f_s)_{i, y_i}``. Without them the method is a point estimate:
``y*_s ~ Cat(p)`` (S seeded draws) and the log-likelihood ``log p_{i, y_i}`` is the same in every
draw (a point-mass posterior), so all groups share one ``draw`` axis.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

EPS = 1e-12


@dataclass
class PredictiveDraws:
    """Everything the ArviZ groups need for one evaluation set (NumPy, sample axis first)."""

    labels: np.ndarray  # (N,) observed
    classnames: list[str]
    predictive: np.ndarray  # (S, N) posterior predictive labels
    log_likelihood: np.ndarray  # (S, N)
    logits: np.ndarray | None = None  # (S, N, C) posterior samples, when the method has them


def predictive_draws(
    probs: torch.Tensor,
    labels: torch.Tensor,
    classnames: list[str],
    logit_samples: torch.Tensor | None = None,
    draws: int = 100,
    seed: int = 0,
) -> PredictiveDraws:
    """Draw posterior predictive labels (seeded) and compute the pointwise log-likelihood.

    ``draws`` is used only without ``logit_samples``; with them there is one draw per sample.
    """
    if draws < 1:
        raise ValueError(f"draws must be >= 1, got {draws}")
    gen = torch.Generator().manual_seed(seed)
    idx = torch.arange(len(labels))
    if logit_samples is not None:
        if logit_samples.ndim != 3 or logit_samples.shape[1:] != probs.shape:
            raise ValueError(
                f"logit_samples must be (S, N, C) with (N, C) = {tuple(probs.shape)}, got "
                f"{tuple(logit_samples.shape)}; fix the method's predict()"
            )
        logp = logit_samples.double().log_softmax(-1)  # (S, N, C)
        s, n, c = logp.shape
        pred = torch.multinomial(logp.exp().reshape(s * n, c), 1, generator=gen).reshape(s, n)
        loglik = logp[:, idx, labels]
        logits = logit_samples.float().numpy()
    else:
        p = probs.double().clamp_min(0)
        pred = torch.multinomial(p, draws, replacement=True, generator=gen).T  # (S, N)
        loglik = p[idx, labels].clamp_min(EPS).log().expand(draws, -1)
        logits = None
    return PredictiveDraws(
        labels=labels.numpy().astype(np.int64),
        classnames=list(classnames),
        predictive=pred.numpy().astype(np.int64),
        log_likelihood=loglik.numpy(),
        logits=logits,
    )
