"""Choosing base-to-new hyper-parameters without new classes: pseudo-base / pseudo-new folds.

The base classes of the training data are split as the protocol splits all classes (fold 0:
the first ``ceil(K/2)`` are pseudo-base, the rest pseudo-new; fold 1: the mirror image). Each
candidate is trained on the pseudo-base rows only and scored by the harmonic mean
``H = 2 b n / (b + n)`` (CoCoOp's base-to-new summary) of pseudo-base accuracy (on the
validation rows of those classes, or the training rows when there is no validation data) and
pseudo-new accuracy (on every train and validation row of the held-out base classes), averaged
over folds. Only the ``train`` and ``val`` sets handed to ``fit`` are read; in base-to-new those
hold base classes only, so no new-class or test image is ever seen.

Two criteria (``score``): ``"accuracy"``, H of the accuracies (ties: higher pseudo-new
accuracy); ``"log-score"``, H of the geometric-mean likelihoods ``exp(-NLL)`` of the true class
(a smooth proper score, Gneiting & Raftery 2007, so the 2-3 pseudo-new classes rarely tie).
Remaining ties go to the candidate ``prefer`` ranks highest (e.g. the larger KL weight, the
model closer to its prior), then to grid order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from pyro_clip.diagnostics.metrics import harmonic_mean
from pyro_clip.errors import ConfigError
from pyro_clip.features.cache import FeatureSet
from pyro_clip.training.selection import grid

#: ``fit(candidate, train)`` trains once and returns ``evaluate(eval_set) -> (accuracy, NLL)``
FitScore = Callable[[Mapping[str, Any], FeatureSet], Callable[[FeatureSet], tuple[float, float]]]
#: selection criteria: H of accuracies, or H of geometric-mean likelihoods exp(-NLL)
SCORES = ("accuracy", "log-score")
#: the table column each criterion maximises, then its first tie-break column
_KEYS = {"accuracy": ("pseudo_h", "pseudo_new"), "log-score": ("pseudo_h_lik", "pseudo_new_lik")}


def pseudo_folds(n_classes: int, n_folds: int = 2) -> list[tuple[list[int], list[int]]]:
    """``(pseudo_base, pseudo_new)`` class ids of each fold (1 or 2 folds, >= 2 classes)."""
    if n_classes < 2:
        raise ConfigError(f"select=pseudo-new needs >= 2 training classes, got {n_classes}; "
                          "use the fixed defaults (select=fixed)")
    if n_folds not in (1, 2):
        raise ConfigError(f"select_folds must be 1 or 2, got {n_folds!r}")
    m = math.ceil(n_classes / 2)
    ids = list(range(n_classes))
    folds = [(ids[:m], ids[m:])]
    if n_folds == 2:
        folds.append((ids[n_classes - m:], ids[: n_classes - m]))
    return folds


def _concat(a: FeatureSet, b: FeatureSet) -> FeatureSet:
    keys = [k for k in a.features if k in b.features]
    return FeatureSet({k: torch.cat([a.features[k], b.features[k]]) for k in keys},
                      torch.cat([a.labels, b.labels]), a.classnames, a.name)


def select_pseudo_new(
    axes: Mapping[str, Sequence[Any]],
    fit_score: FitScore,
    train: FeatureSet,
    val: FeatureSet,
    n_folds: int = 2,
    score: str = "accuracy",
    prefer: Callable[[Mapping[str, Any]], tuple[float, ...]] | None = None,
) -> dict[str, Any]:
    """The grid point of ``axes`` with the best mean pseudo-new H under ``score``, and the table.

    Every row of the table holds both criteria, so one search can be read either way.
    """
    if score not in SCORES:
        raise ConfigError(f"select_score must be one of {SCORES}, got {score!r}")
    if train.classnames != val.classnames and len(val):
        raise ConfigError("train and val must share the class list for select=pseudo-new")
    folds = pseudo_folds(len(train.classnames), n_folds)
    table: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    best_row: dict[str, Any] = {}
    best_key: tuple[float, ...] = (-math.inf,)
    for cand in grid(**{k: list(v) for k, v in axes.items()}):
        folds_scores = []
        for pb, pn in folds:
            tr = train.restrict_classes(pb)
            base_eval = val.restrict_classes(pb) if len(val) else tr
            new_eval = train.restrict_classes(pn)
            if len(val):
                new_eval = _concat(new_eval, val.restrict_classes(pn))
            evaluate = fit_score(cand, tr)
            (b, b_nll), (n, n_nll) = evaluate(base_eval), evaluate(new_eval)
            b_lik, n_lik = math.exp(-b_nll), math.exp(-n_nll)
            folds_scores.append({"pseudo_base": b, "pseudo_new": n, "pseudo_h": harmonic_mean(b, n),
                                 "pseudo_base_nll": b_nll, "pseudo_new_nll": n_nll,
                                 "pseudo_new_lik": n_lik,
                                 "pseudo_h_lik": harmonic_mean(b_lik, n_lik)})
        row = {**cand, **{k: sum(f[k] for f in folds_scores) / len(folds_scores)
                          for k in folds_scores[0]}}
        table.append(row)
        key = tuple(row[k] for k in _KEYS[score]) + (tuple(prefer(cand)) if prefer else ())
        if key > best_key:  # strict: among exact ties (prefer included) the first wins
            best, best_row, best_key = dict(cand), row, key
    assert best is not None  # grid() refuses empty axes
    return {"best": best, "score": score, "pseudo_h": best_row["pseudo_h"],
            "pseudo_new": best_row["pseudo_new"], "pseudo_h_lik": best_row["pseudo_h_lik"],
            "folds": [{"pseudo_base": pb, "pseudo_new": pn} for pb, pn in folds], "table": table}
