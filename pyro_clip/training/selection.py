"""Hyper-parameter search on the validation split (never on test), shared by every method.

A method hands :func:`grid_search` its candidate settings and a function that scores one
setting on the *validation* ``FeatureSet``; the first best candidate wins (ties keep grid order,
so results are deterministic). The score is validation accuracy, ties broken by lower NLL
(:func:`validation_score`). The winning setting and the whole score table are returned so the
method can record them in ``self.selected`` (written to ``config.json``).

The anchors' released code picks e.g. Tip-Adapter's ``alpha``/``beta`` on the test set; here the
only labelled data a method ever sees are the ``train`` and ``val`` sets passed to ``fit``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from pyro_clip.diagnostics.metrics import accuracy, negative_log_likelihood
from pyro_clip.errors import ConfigError, DataError
from pyro_clip.features.cache import FeatureSet


@dataclass
class SearchResult:
    """The chosen setting, its score and every (setting, score) tried, in grid order."""

    best: dict[str, Any]
    best_score: tuple[float, float]
    table: list[dict[str, Any]] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        """A JSON-ready summary for ``Method.selected``."""
        acc, neg_nll = self.best_score
        return {**self.best, "val_accuracy": acc, "val_nll": -neg_nll,
                "n_candidates": len(self.table)}


def grid(**axes: Sequence[Any]) -> list[dict[str, Any]]:
    """Cartesian product of named axes, e.g. ``grid(alpha=[0, 1], beta=[1, 5])`` -> 4 dicts."""
    for name, values in axes.items():
        if len(values) == 0:
            raise ConfigError(f"search axis {name!r} is empty; give at least one value")
    names = list(axes)
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*axes.values())]


def log_grid(low: float, high: float, n: int) -> list[float]:
    """``n`` values evenly spaced in log space from ``low`` to ``high`` (both > 0)."""
    if not (0 < low <= high) or n < 1:
        raise ConfigError(f"log grid needs 0 < low <= high and n >= 1, got {low}, {high}, {n}")
    return [float(v) for v in np.geomspace(low, high, n)]


def validation_score(probs: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """``(accuracy, -NLL)`` on validation: compared lexicographically, higher is better."""
    return accuracy(probs, labels), -negative_log_likelihood(probs, labels)


def check_validation(val: FeatureSet, method: str) -> None:
    """Searching needs labelled validation data; say how to get it when there is none."""
    if len(val) == 0:
        raise DataError(
            f"{method}: the validation split is empty, so hyper-parameters cannot be chosen; "
            "use a data set with a 'val' split or fix the option (e.g. --opt alpha=1.0)"
        )


def grid_search(
    candidates: Iterable[Mapping[str, Any]],
    score: Callable[[Mapping[str, Any]], tuple[float, float]],
) -> SearchResult:
    """Evaluate ``score(candidate)`` for each candidate and keep the first maximum."""
    best: dict[str, Any] | None = None
    best_score = (-math.inf, -math.inf)
    table: list[dict[str, Any]] = []
    for cand in candidates:
        s = tuple(float(v) for v in score(cand))
        if any(math.isnan(v) for v in s):
            raise ConfigError(f"validation score is NaN for {dict(cand)}; narrow the search grid")
        table.append({**cand, "val_accuracy": s[0], "val_nll": -s[1]})
        if s > best_score:
            best, best_score = dict(cand), s  # strict '>' keeps the first of tied candidates
    if best is None:
        raise ConfigError("the hyper-parameter grid is empty; give at least one candidate")
    return SearchResult(best, best_score, table)  # type: ignore[arg-type]


def stratified_folds(labels: torch.Tensor, k: int, seed: int) -> list[torch.Tensor]:
    """``k`` disjoint index sets covering ``0..N-1``: each class's examples shuffled with
    ``seed`` and dealt round-robin, so every fold holds ``floor`` or ``ceil(n_c / k)`` of class
    ``c``. Raises :class:`ConfigError` when ``k`` < 2 or exceeds the examples."""
    if k < 2 or k > len(labels):
        raise ConfigError(f"cross-validation needs 2 <= folds <= {len(labels)} examples, got "
                          f"{k}; pass cv_folds= within that range")
    gen = torch.Generator().manual_seed(seed)
    out: list[list[int]] = [[] for _ in range(k)]
    start = 0
    for c in labels.unique():
        idx = (labels == c).nonzero()[:, 0]
        for j, i in enumerate(idx[torch.randperm(len(idx), generator=gen)].tolist()):
            out[(start + j) % k].append(i)
        start += len(idx)  # the next class starts where this one stopped: folds stay even
    return [torch.tensor(sorted(f), dtype=torch.long) for f in out]

