"""Posterior predictive label draws and pointwise log-likelihoods from a ``Prediction``.

With posterior logit samples ``f_s`` (S, N, C): ``y*_s ~ Cat(softmax f_s)`` and
``log p(y_i | f_s) = log_softmax(f_s)_{i, y_i}``. A method that reduces its draws in chunks
hands over the replicates ``y*_s`` of all S draws and keeps the logits of only the first
draws (:mod:`pyro_clip.inference.predictive`): the log-likelihood then covers those draws
(none when none were kept). Without samples the method is a point estimate:
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
    log_likelihood: np.ndarray | None  # (S', N), S' <= S the draws with logits; None: none
    logits: np.ndarray | None = None  # (S', N, C) posterior samples, when the method has them
    #: whether the draws come from a posterior (False: plug-in draws of a point estimate)
    posterior: bool = False
    #: (S, C) per-class training margins computed draw by draw (instead of ``logits``)
    margins: np.ndarray | None = None


def predictive_draws(
    probs: torch.Tensor,
    labels: torch.Tensor,
    classnames: list[str],
    logit_samples: torch.Tensor | None = None,
    draws: int = 100,
    seed: int = 0,
    replicates: torch.Tensor | None = None,
) -> PredictiveDraws:
    """Draw posterior predictive labels (seeded) and compute the pointwise log-likelihood.

    ``draws`` is used only without ``logit_samples`` or ``replicates``; with them there is one
    draw per sample. ``replicates`` (S, N): the posterior predictive labels already drawn by
    the method from all its draws (``logit_samples`` then holds the first S' <= S of them).
    """
    if draws < 1:
        raise ValueError(f"draws must be >= 1, got {draws}")
    gen = torch.Generator().manual_seed(seed)
    idx = torch.arange(len(labels))
    if logit_samples is not None and (logit_samples.ndim != 3
                                      or logit_samples.shape[1:] != probs.shape):
        raise ValueError(
            f"logit_samples must be (S, N, C) with (N, C) = {tuple(probs.shape)}, got "
            f"{tuple(logit_samples.shape)}; fix the method's predict()"
        )
    if replicates is not None and (replicates.ndim != 2 or replicates.shape[1] != len(labels)):
        raise ValueError(f"replicates must be (S, N) with N = {len(labels)}, got "
                         f"{tuple(replicates.shape)}; fix the method's predict()")
    loglik: torch.Tensor | None
    logits = None
    if logit_samples is not None:
        logp = logit_samples.double().log_softmax(-1)  # (S, N, C)
        loglik = logp[:, idx, labels]
        logits = logit_samples.float().numpy()
        if replicates is None:
            s, n, c = logp.shape
            pred = torch.multinomial(logp.exp().reshape(s * n, c), 1,
                                     generator=gen).reshape(s, n)
        del logp
    elif replicates is None:
        p = probs.double().clamp_min(0)
        pred = torch.multinomial(p, draws, replacement=True, generator=gen).T  # (S, N)
        loglik = p[idx, labels].clamp_min(EPS).log().expand(draws, -1)
    else:
        loglik = None
    if replicates is not None:
        pred = replicates
    return PredictiveDraws(
        labels=labels.numpy().astype(np.int64),
        classnames=list(classnames),
        predictive=pred.numpy().astype(np.int64),
        log_likelihood=None if loglik is None else loglik.numpy(),
        logits=logits,
        posterior=logit_samples is not None or replicates is not None,
    )
