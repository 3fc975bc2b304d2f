"""Acquisition scores for active labelling with a fitted Kalman adapter (higher = label first).

All three read the posterior that ``predict`` uses:

* ``entropy``: predictive entropy ``H[p(y | x, D)] = -sum_c p_c log p_c`` of ``predict``'s
  probabilities (probit or Monte Carlo, per the ``predictive`` option);
* ``bald``: mutual information between the label and the weights (Houlsby et al. 2011, eq. 2),
  ``H[E_w p(y | x, w)] - E_w H[p(y | x, w)]``, from ``predict``'s logit samples (both terms
  from the same draws, so it is >= 0);
* ``variance``: expected reduction of the candidate's total logit variance if it were labelled,
  ``tr V - E_y tr V+`` with ``V = J P J^T`` (C x C). For the categorical EKF the covariance
  step does not depend on the label: ``tr V - tr V+ = tr(V L (I + L^T V L)^-1 L^T V)`` with
  ``L L^T = diag p - p p^T`` at the mean logits (the filter's own linearisation). For the
  cosine observation of the matched logit ``z_y / s`` with noise R it is
  ``sum_y p_y ||V e_y||^2 / (V_yy + s^2 R)``, ``p`` the predictive.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from pyro_clip.errors import ConfigError
from pyro_clip.inference.covariance import DTYPE
from pyro_clip.inference.kalman import categorical_sqrt
from pyro_clip.inference.kalman_adapters import LinearHead

if TYPE_CHECKING:
    from pyro_clip.methods.kalman import KalmanAdapter

SCORES = ("entropy", "bald", "variance")
_CHUNK = 16  # pool images per block of the (B C) x (B C) logit covariance


def predictive_entropy(probs: torch.Tensor) -> torch.Tensor:
    """``-sum_c p_c log p_c`` over the last axis (0 log 0 = 0)."""
    p = probs.to(DTYPE)
    return -torch.special.xlogy(p, p).sum(-1)


def mutual_information(logit_samples: torch.Tensor) -> torch.Tensor:
    """BALD from logit draws (S, N, C): entropy of the mean softmax minus the mean entropy."""
    probs = logit_samples.to(DTYPE).softmax(-1)
    return (predictive_entropy(probs.mean(0)) - predictive_entropy(probs).mean(0)).clamp_min(0)


def logit_covariances(method: KalmanAdapter, x: torch.Tensor) -> torch.Tensor:
    """``V_n = J_n P J_n^T`` (N, C, C) over the model's classes, linearised at the mean."""
    state, adapter = method._fitted()
    text = method.ctx.text_classifier(method.train_classnames)
    if isinstance(adapter, LinearHead) and state.cov.kind in ("block", "diag"):
        # class-block-diagonal P and one class per Jacobian block: V_n is diagonal
        var = state.cov.var(adapter.jacobian(state.mean, x, text)).reshape(len(x), -1)
        return torch.diag_embed(var)
    out = []
    for xb in x.split(_CHUNK):
        b = len(xb)
        q = state.cov.quad(adapter.jacobian(state.mean, xb, text))
        c = q.shape[0] // b
        q = q.reshape(b, c, b, c)
        out.append(q[torch.arange(b), :, torch.arange(b), :])
    return torch.cat(out)


def variance_reduction(method: KalmanAdapter, x: torch.Tensor,
                       predictive: torch.Tensor) -> torch.Tensor:
    """Expected drop of ``tr V`` from labelling each pool image (module docstring), (N,)."""
    state, adapter = method._fitted()
    v = logit_covariances(method, x)
    if method.options["observation"] == "categorical":
        text = method.ctx.text_classifier(method.train_classnames)
        probs = adapter.logits(state.mean, x.to(DTYPE), text).to(DTYPE).softmax(-1)
        k = categorical_sqrt(probs) @ v  # L^T V, (N, C, C)
        eye = torch.eye(v.shape[-1], dtype=DTYPE, device=v.device)
        s = eye + k @ categorical_sqrt(probs).transpose(-1, -2)
        return (k * torch.linalg.solve(s, k)).sum((-1, -2))
    scale2 = method.logit_scale ** 2
    per_label = (v * v).sum(-2) / (v.diagonal(dim1=-2, dim2=-1) + scale2 * method.obs_var)
    return (predictive.to(DTYPE) * per_label).sum(-1)


def acquisition_scores(method: KalmanAdapter, x: torch.Tensor, score: str) -> torch.Tensor:
    """Scores (N,) float64 of pool features ``x`` (N, D) over the model's classes."""
    if score not in SCORES:
        raise ConfigError(f"acquisition score {score!r} is not known; use score="
                          + "|".join(SCORES))
    pred = method.predict(x, method.train_classnames)
    if score == "entropy":
        return predictive_entropy(pred.probs)
    if score == "bald":
        if pred.mutual_information is not None:  # from all draws, reduced in chunks
            return pred.mutual_information.to(DTYPE).clamp_min(0)
        assert pred.logit_samples is not None
        return mutual_information(pred.logit_samples)
    return variance_reduction(method, x, pred.probs)
