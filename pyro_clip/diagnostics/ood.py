"""Out-of-distribution detection: scores from predictions, and AUROC, AUPR-in, AUPR-out and
FPR@95%TPR as OpenOOD and torch-uncertainty report them.

Convention (Hendrycks & Gimpel 2017; OpenOOD): every score is *higher = more OOD*. AUROC,
FPR@95 and AUPR-in treat in-distribution as the positive class scored by ``-score``; AUPR-out
treats OOD as the positive class scored by ``score``. AUROC, the ROC and the average precision
(area under the precision-recall curve) come from torchmetrics.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torchmetrics.functional.classification import (
    binary_auroc,
    binary_average_precision,
    binary_roc,
)

EPS = 1e-12
#: the prediction's own OOD scores, by their display name
BUILTIN_SCORES = {"msp": "max prob. (MSP)", "entropy": "entropy",
                  "mutual_information": "mutual information"}


def score_name(name: str) -> str:
    """One form for every OOD score: the prediction's own by name, a method's own as
    ``<method>: <score>`` (``kalman: mahalanobis``)."""
    if name in BUILTIN_SCORES:
        return BUILTIN_SCORES[name]
    method, sep, score = name.partition(":")
    return f"{method}: {score.replace('_', ' ')}" if sep else name.replace("_", " ")


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """H(p) = -sum_c p_c log p_c per row (nats)."""
    probs = probs.double()
    return -(probs * probs.clamp_min(EPS).log()).sum(-1)


def prediction_scores(
    probs: torch.Tensor, logit_samples: torch.Tensor | None = None,
    mutual_information: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """OOD scores every method has: ``msp`` = -max_c p_c, ``entropy`` = H(p); with posterior
    samples also ``mutual_information`` = H(E_s p_s) - E_s H(p_s) (epistemic part, Houlsby 2011),
    as given (computed from all draws by the method) or from ``logit_samples``.
    """
    scores = {"msp": -probs.double().max(-1).values, "entropy": entropy(probs)}
    if mutual_information is not None:
        scores["mutual_information"] = mutual_information.double()
    elif logit_samples is not None:
        p_s = logit_samples.double().softmax(-1)
        scores["mutual_information"] = entropy(p_s.mean(0)) - entropy(p_s).mean(0)
    return scores


def fpr_at_tpr(id_scores: torch.Tensor, ood_scores: torch.Tensor, tpr: float = 0.95) -> float:
    """Fraction of OOD examples accepted when the threshold keeps ``tpr`` of the ID examples."""
    preds, target = _stack(id_scores, ood_scores)
    fpr, tpr_curve, _ = binary_roc(preds, target)
    return float(fpr[tpr_curve >= tpr - 1e-12].min())


def auroc(id_scores: torch.Tensor, ood_scores: torch.Tensor) -> float:
    """P(score_ood > score_id) + 1/2 P(tie): area under the ROC of ID-vs-OOD."""
    preds, target = _stack(id_scores, ood_scores)
    return float(binary_auroc(preds, target))


def aupr_in(id_scores: torch.Tensor, ood_scores: torch.Tensor) -> float:
    """Average precision of finding the in-distribution examples by ``-score`` (ID positive)."""
    preds, target = _stack(id_scores, ood_scores)
    return float(binary_average_precision(preds, target))


def aupr_out(id_scores: torch.Tensor, ood_scores: torch.Tensor) -> float:
    """Average precision of finding the OOD examples by ``score`` (OOD positive)."""
    preds, target = _stack(id_scores, ood_scores)
    return float(binary_average_precision(1 - preds, 1 - target))


def _stack(id_scores: torch.Tensor, ood_scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    id_scores, ood_scores = torch.as_tensor(id_scores), torch.as_tensor(ood_scores)
    if id_scores.ndim != 1 or ood_scores.ndim != 1 or not len(id_scores) or not len(ood_scores):
        raise ValueError("OOD scores must be non-empty 1-d tensors (one score per example)")
    # in-distribution is the positive class; higher score = more OOD, so negate. torchmetrics
    # treats values outside [0, 1] as logits (sigmoid, which saturates and creates false ties):
    # pass dense ranks scaled to [0, 1] instead, an exact order- and tie-preserving map.
    _, ranks = torch.unique(-torch.cat([id_scores, ood_scores]).double(), return_inverse=True)
    preds = ranks.double() / max(int(ranks.max()), 1)
    target = torch.cat([torch.ones(len(id_scores)), torch.zeros(len(ood_scores))]).long()
    return preds, target


def ood_metrics(
    id_scores: Mapping[str, torch.Tensor], ood_scores: Mapping[str, torch.Tensor]
) -> dict[str, dict[str, float]]:
    """``{score: {"auroc", "aupr_in", "aupr_out", "fpr95"}}`` for every score in both mappings."""
    return {
        name: {
            "auroc": auroc(id_scores[name], ood_scores[name]),
            "aupr_in": aupr_in(id_scores[name], ood_scores[name]),
            "aupr_out": aupr_out(id_scores[name], ood_scores[name]),
            "fpr95": fpr_at_tpr(id_scores[name], ood_scores[name]),
        }
        for name in id_scores
        if name in ood_scores
    }
