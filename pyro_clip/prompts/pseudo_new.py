"""Choosing base-to-new hyper-parameters without new classes: pseudo-base / pseudo-new folds.

The base classes of the training data are split as the protocol splits all classes (fold 0:
the first ``ceil(K/2)`` are pseudo-base, the rest pseudo-new; fold 1: the mirror image). Each
candidate is trained on the pseudo-base rows only and scored by the harmonic mean
``H = 2 b n / (b + n)`` (CoCoOp's base-to-new summary) of pseudo-base accuracy (on the
validation rows of those classes, or the training rows when there is no validation data) and
pseudo-new accuracy (on every train and validation row of the held-out base classes), averaged
over folds. Only the ``train`` and ``val`` sets handed to ``fit`` are read; in base-to-new those
hold base classes only, so no new-class or test image is ever seen. Ties keep grid order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from pyro_clip.errors import ConfigError
from pyro_clip.features import FeatureSet
from pyro_clip.metrics import harmonic_mean
from pyro_clip.selection import grid

#: ``fit(candidate, train) -> accuracy``: trains once, returns ``accuracy(eval_set) -> float``
FitScore = Callable[[Mapping[str, Any], FeatureSet], Callable[[FeatureSet], float]]


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
) -> dict[str, Any]:
    """The grid point of ``axes`` with the best mean pseudo-new H, and the whole score table."""
    if train.classnames != val.classnames and len(val):
        raise ConfigError("train and val must share the class list for select=pseudo-new")
    folds = pseudo_folds(len(train.classnames), n_folds)
    table: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    best_key = (-math.inf, -math.inf)
    for cand in grid(**{k: list(v) for k, v in axes.items()}):
        scores = []
        for pb, pn in folds:
            tr = train.restrict_classes(pb)
            base_eval = val.restrict_classes(pb) if len(val) else tr
            new_eval = train.restrict_classes(pn)
            if len(val):
                new_eval = _concat(new_eval, val.restrict_classes(pn))
            accuracy = fit_score(cand, tr)
            b, n = accuracy(base_eval), accuracy(new_eval)
            scores.append((b, n, harmonic_mean(b, n)))
        mean_b, mean_n, mean_h = (sum(s[i] for s in scores) / len(scores) for i in range(3))
        table.append({**cand, "pseudo_base": mean_b, "pseudo_new": mean_n, "pseudo_h": mean_h})
        key = (mean_h, mean_n)
        if key > best_key:  # strict: the first of tied candidates wins
            best, best_key = dict(cand), key
    assert best is not None  # grid() refuses empty axes
    return {"best": best, "pseudo_h": best_key[0], "pseudo_new": best_key[1],
            "folds": [{"pseudo_base": pb, "pseudo_new": pn} for pb, pn in folds], "table": table}
