"""Posterior predictive checks of the conditional model p(y | x) (Gelman et al. 1996; BDA3 ch. 6).

Replicated labels ``y*_s`` come from the posterior predictive, jointly per posterior draw
(``y*_s,i ~ Cat(softmax f_s(x_i))``, :mod:`pyro_clip.diagnostics.predictive`). Each check is a
discrepancy ``T(y, x)`` that holds the *predictions* fixed (predicted class ``yhat_i`` and
confidence ``q_i`` of the predictive mean) and varies only the labels, so it tests how labels
depend on the inputs, not the label marginal:

* ``calibration``: ``T = sum_b |B_b|/N |acc_b(y) - conf_b|`` over equal-width confidence bins
  (the ECE as a discrepancy; a calibration PPC). Replicated ECEs are positive noise of size
  ~ sqrt(conf (1 - conf) / |B_b|), so a calibrated model's observed ECE sits inside them.
* ``accuracy``: ``T = mean_i 1[y_i = yhat_i]`` (the predictive expects ``mean_i q_i``).
* ``log_score``: ``T = sum_i log p(y_i | x_i, D)`` under the predictive mean.
* ``class_frequency``: ``T = sum_c (n_c(y) - m_c)^2 / m_c``, ``n_c`` the count of label c and
  ``m_c = sum_i p(c | x_i, D)`` its predictive expectation (a chi-square discrepancy of the
  label marginal: fails when the predictive favours some classes over what the data hold).
* ``recall_<c>``: per-class recall ``#{y_i = c, yhat_i = c} / #{y_i = c}`` (a confusion-matrix
  row), one check per class.

Bayesian p-value ``p = P(T(y*) >= T(y))`` (ties counted half), two-sided for the calibration
check's reading: ``p`` near 0 means the observed discrepancy is larger than the model produces.
Under a well-specified model ``p`` is roughly uniform; values below ~0.01 or above ~0.99 flag
misfit. Plain NumPy: no ArviZ here (the ArviZ calls live in ``arviz_io``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pyro_clip.diagnostics.predictive import PredictiveDraws

EPS = 1e-12
#: a two-sided check passes when ``PASS_RANGE[0] <= p <= PASS_RANGE[1]``: the observed
#: statistic is neither almost never nor almost always reached by the model's replicates
PASS_RANGE: tuple[float, float] = (0.01, 0.99)


@dataclass
class PPCResult:
    """One check: the observed discrepancy, its replicated values (S,) and the p-value."""

    observed: float
    replicated: np.ndarray
    p_value: float


@dataclass
class CalibrationPPC:
    """Per-bin observed accuracy (B,) against replicated accuracies (S, B); NaN = empty bin."""

    edges: np.ndarray
    count: np.ndarray
    confidence: np.ndarray
    observed: np.ndarray
    replicated: np.ndarray


def bayesian_p_value(observed: float, replicated: np.ndarray) -> float:
    """``P(T(y*) >= T(y))`` with ties counted half (mid-p), ignoring NaN replicates."""
    rep = np.asarray(replicated, dtype=float)
    rep = rep[np.isfinite(rep)]
    if rep.size == 0 or not np.isfinite(observed):
        return float("nan")
    return float(((rep > observed).sum() + 0.5 * (rep == observed).sum()) / rep.size)


def _bins(conf: np.ndarray, bins: int) -> np.ndarray:
    """torchmetrics' equal-width bin index, confidence exactly 1 in its own bin ``bins``."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    return np.clip(np.searchsorted(edges, conf, side="right") - 1, 0, bins)


def _ece(correct: np.ndarray, conf: np.ndarray, idx: np.ndarray, n_bins: int) -> np.ndarray:
    """ECE of (..., N) correctness with fixed confidences and bins; vectorised over leading axes."""
    n = conf.shape[-1]
    onehot = np.eye(n_bins)[idx]  # (N, B)
    gap = correct @ onehot - conf @ onehot  # (..., B): sum_{i in b} (1[correct] - conf)
    return np.abs(gap).sum(-1) / n


def calibration_ppc(
    probs: torch.Tensor, draws: PredictiveDraws, bins: int = 10
) -> tuple[PPCResult, CalibrationPPC]:
    """The calibration PPC: ECE discrepancy and per-bin accuracy, observed vs replicated."""
    p = probs.double().numpy()
    conf, pred = p.max(-1), p.argmax(-1)
    idx = _bins(conf, bins)
    n_bins = bins + 1
    obs_correct = (draws.labels == pred).astype(float)
    rep_correct = (draws.predictive == pred[None]).astype(float)  # (S, N)
    observed = float(_ece(obs_correct, conf, idx, n_bins))
    replicated = _ece(rep_correct, conf, idx, n_bins)
    count = np.bincount(idx, minlength=n_bins)
    onehot = np.eye(n_bins)[idx]
    with np.errstate(invalid="ignore", divide="ignore"):
        per_bin = CalibrationPPC(
            edges=np.append(np.linspace(0.0, 1.0, bins + 1), 1.0),
            count=count,
            confidence=conf @ onehot / count,
            observed=obs_correct @ onehot / count,
            replicated=rep_correct @ onehot / count,
        )
    return PPCResult(observed, replicated, bayesian_p_value(observed, replicated)), per_bin


def class_recall(labels: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Recall per class of (..., N) labels against fixed predictions (N,); NaN if absent."""
    hit = np.stack([((labels == c) & (pred == c)).sum(-1) for c in range(n_classes)], -1)
    support = np.stack([(labels == c).sum(-1) for c in range(n_classes)], -1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return hit / support


def ppc_checks(probs: torch.Tensor, draws: PredictiveDraws, bins: int = 10) -> dict[str, PPCResult]:
    """Every check of the module docstring for one evaluation set, keyed by name."""
    p = probs.double().numpy()
    pred = p.argmax(-1)
    n_classes = p.shape[1]
    y, rep = draws.labels, draws.predictive
    out = {"calibration": calibration_ppc(probs, draws, bins)[0]}
    acc_obs = float((y == pred).mean())
    acc_rep = (rep == pred[None]).mean(-1)
    out["accuracy"] = PPCResult(acc_obs, acc_rep, bayesian_p_value(acc_obs, acc_rep))
    logp = np.log(np.clip(p, EPS, None))
    ls_obs = float(logp[np.arange(len(y)), y].sum())
    ls_rep = np.take_along_axis(logp[None], rep[..., None], -1)[..., 0].sum(-1)
    out["log_score"] = PPCResult(ls_obs, ls_rep, bayesian_p_value(ls_obs, ls_rep))
    expected = np.clip(p.sum(0), EPS, None)
    n_obs = np.bincount(y, minlength=n_classes)
    n_rep = np.stack([np.bincount(r, minlength=n_classes) for r in rep])
    cf_obs = float(((n_obs - expected) ** 2 / expected).sum())
    cf_rep = ((n_rep - expected) ** 2 / expected).sum(-1)
    out["class_frequency"] = PPCResult(cf_obs, cf_rep, bayesian_p_value(cf_obs, cf_rep))
    rec_obs, rec_rep = class_recall(y, pred, n_classes), class_recall(rep, pred, n_classes)
    for c in range(n_classes):
        out[f"recall_{c}"] = PPCResult(float(rec_obs[c]), rec_rep[:, c],
                                       bayesian_p_value(float(rec_obs[c]), rec_rep[:, c]))
    return out


def ppc_summary(checks: dict[str, PPCResult]) -> dict[str, float]:
    """``metrics.json`` block: the p-value of each check, plus the smallest two-sided
    ``2 min(p, 1 - p)`` over the per-class recalls (how surprising the worst class is)."""
    out = {f"p_{k}": v.p_value for k, v in checks.items() if not k.startswith("recall_")}
    recalls = [v.p_value for k, v in checks.items() if k.startswith("recall_")
               and np.isfinite(v.p_value)]
    if recalls:
        out["p_recall_min_two_sided"] = float(min(2 * min(p, 1 - p) for p in recalls))
    return out


def ppc_side_by_side(
    models: dict[str, tuple[torch.Tensor, PredictiveDraws]], title: str = "held-out PPC"
):
    """The PPC figure of several models on the same held-out labels, one row per model
    (e.g. the calibrated default next to a mis-specified prior), and each model's p-values:
    ``models`` maps a label to ``(probs, draws)`` (draws from
    :func:`~pyro_clip.diagnostics.predictive.predictive_draws` of that model's prediction)."""
    from pyro_clip.diagnostics.plots import ppc_figure

    return ppc_figure(models, title), {k: ppc_summary(ppc_checks(p, d)) for k, (p, d)
                                       in models.items()}
