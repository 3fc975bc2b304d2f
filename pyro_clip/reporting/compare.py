"""``az.compare`` (PSIS-LOO, Vehtari et al. 2017) of report runs fitted to the same training data.

Runs are compared only within one training-data key (data set, protocol, shots, seed: the same
few-shot images and labels) and only when their ``idata.nc`` has a posterior with a
``log_likelihood`` group; every run left out is named with the reason, so the table never
silently drops one.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

from pyro_clip.reporting.gather import RunInfo

#: (az.compare column, title) shown in the report
COMPARE_COLUMNS = (("rank", "rank"), ("elpd_loo", "elpd LOO"), ("p_loo", "p LOO"),
                   ("elpd_diff", "elpd diff"), ("dse", "SE of diff"), ("weight", "weight"),
                   ("se", "SE"), ("warning", "Pareto k > 0.7"))


def _cell(value: Any) -> str:
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return "yes" if value else "no"
    if isinstance(value, float | int) or hasattr(value, "dtype"):
        value = float(value)
        if math.isnan(value):
            return ""
        return f"{value:.0f}" if value.is_integer() and abs(value) < 100 else f"{value:.2f}"
    return str(value)


def _load(run: RunInfo) -> tuple[Any, str | None]:
    """The run's InferenceData, or None and why it cannot be compared."""
    path = run.path / "idata.nc"
    if not path.exists():
        return None, "no idata.nc"
    from pyro_clip.diagnostics import arviz_io

    try:
        idata = arviz_io.load(path)
    except (OSError, ValueError) as exc:
        return None, f"idata.nc unreadable ({exc})"
    if not arviz_io.has_posterior(idata):
        return None, "point estimate (no posterior / log_likelihood)"
    return idata, None


def comparisons(runs: Sequence[RunInfo]) -> list[dict[str, Any]]:
    """One entry per training-data key holding at least two runs: the ``az.compare`` table
    (when two or more runs have a posterior) and notes on the runs left out."""
    from pyro_clip.diagnostics import arviz_io

    by_key: dict[tuple[str, ...], list[RunInfo]] = {}
    for run in runs:
        by_key.setdefault(run.training_data, []).append(run)
    out = []
    for (dataset, protocol, shots, seed), members in by_key.items():
        if len(members) < 2:
            continue
        loaded, notes = {}, []
        for run in members:
            idata, why = _load(run)
            if idata is None:
                notes.append(f"{run.label}: left out, {why}.")
            else:
                loaded[run.label] = idata
        entry: dict[str, Any] = {
            "title": f"{dataset} · {protocol} · {shots} shots · seed {seed}",
            "head": [t for _, t in COMPARE_COLUMNS], "table": [], "notes": notes,
        }
        if len(loaded) >= 2:
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    frame = arviz_io.compare(loaded)
            except (ValueError, KeyError, TypeError) as exc:
                notes.append(f"az.compare failed: {exc}")
            else:
                entry["table"] = [
                    {"label": label,
                     "cells": [_cell(row.get(col)) for col, _ in COMPARE_COLUMNS]}
                    for label, row in frame.iterrows()
                ]
                if any("Pareto" in str(w.message) or "pareto" in str(w.message)
                       for w in caught):
                    notes.append("ArviZ warns that some Pareto k are above 0.7: the PSIS-LOO "
                                 "estimate of the runs marked is unreliable.")
        else:
            notes.append("Fewer than two runs with a posterior: nothing to compare.")
        out.append(entry)
    return out
