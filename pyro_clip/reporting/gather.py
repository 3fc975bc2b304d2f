"""What a report shows of each run folder, read from ``config.json`` and ``metrics.json`` only.

Each run is described by what makes it comparable: data set (with its root for ``folder``
data sets, so two different folders never share a label), backbone, protocol, shots, seed and
the method options that differ from the method's defaults. Runs are grouped by
(data set, protocol, shots): only runs of one group stand side by side in a table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyro_clip.diagnostics.ood import score_name
from pyro_clip.diagnostics.ppc import PASS_RANGE
from pyro_clip.utils.io import read_json

#: OOD metric keys of ``metrics.json`` -> column titles (all shown in %)
OOD_METRICS = (("auroc", "AUROC"), ("aupr_in", "AUPR-in"), ("aupr_out", "AUPR-out"),
               ("fpr95", "FPR@95TPR"))
#: held-out PPC p-values of ``metrics.json`` (``<set>.ppc``) -> column titles
PPC_COLUMNS = (("p_accuracy", "accuracy"), ("p_log_score", "log score"),
               ("p_class_frequency", "class frequency"), ("p_calibration", "calibration"),
               ("p_recall_min_two_sided", "worst class recall"))
#: a check passes when its p-value lies in [PPC_PASS[0], PPC_PASS[1]] (one-sided ones: above
#: PPC_PASS[0])
PPC_PASS = PASS_RANGE
#: discrepancies (larger = worse fit, or a two-sided p already): only a small p is a misfit; a
#: p near 1 says the data fit better than the replicates (e.g. an exactly balanced test set)
PPC_ONE_SIDED = frozenset({"p_calibration", "p_class_frequency", "p_recall_min_two_sided"})
#: ``metrics.json`` OOD blocks -> the kind of OOD they measure
OOD_KINDS = (("ood", "covariate shift"), ("semantic_ood", "semantic (new classes)"))


@dataclass
class RunInfo:
    """One run folder as the report shows it."""

    path: Path
    cfg: dict[str, Any]
    metrics: dict[str, Any]
    label: str = ""
    anchor: str = ""
    #: options that differ from the method's defaults, ``key=value`` joined by spaces
    options_diff: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def method(self) -> str:
        return str(self.cfg.get("method", self.path.name))

    @property
    def dataset(self) -> str:
        """The data set name; a ``folder`` data set with its root, ``folder (/data/pets)``."""
        name = str(self.cfg.get("dataset", "?"))
        root = self.cfg.get("data_root")
        return f"{name} ({root})" if name.lower() == "folder" and root else name

    @property
    def protocol(self) -> str:
        return str(self.cfg.get("protocol", "?"))

    @property
    def shots(self) -> Any:
        return self.cfg.get("shots", "?")

    @property
    def seed(self) -> Any:
        return self.cfg.get("seed", "?")

    @property
    def backbone(self) -> str:
        return str(self.cfg.get("backbone", "?"))

    @property
    def group(self) -> tuple[str, str, str]:
        """(data set, protocol, shots): runs that may stand side by side."""
        return self.dataset, self.protocol, str(self.shots)

    @property
    def training_data(self) -> tuple[str, str, str, str]:
        """Runs with the same key were fitted to the same training images and labels."""
        return self.dataset, self.protocol, str(self.shots), str(self.seed)

    @property
    def main_set(self) -> str | None:
        """The in-distribution evaluation set: ``test``, or ``base`` under base-to-new."""
        return next((k for k in ("test", "base") if isinstance(self.metrics.get(k), dict)), None)


def _fmt_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(_fmt_value(v) for v in value) + "]"
    return str(value)


def options_diff(method: str, options: dict[str, Any]) -> str:
    """``key=value`` for every option whose value differs from ``method``'s default (all of
    them when the method is not registered here)."""
    try:
        from pyro_clip.methods import get_method_class

        defaults = get_method_class(method).default_options()
    except Exception:  # a run written by another version: show every option it recorded
        defaults = {}
    diff = {k: v for k, v in sorted(options.items())
            if k not in defaults or defaults[k] != v}
    return " ".join(f"{k}={_fmt_value(v)}" for k, v in diff.items())


def read_runs(paths: Sequence[Path]) -> list[RunInfo]:
    """Read every run folder; labels are ``method`` made unique within the report."""
    runs = []
    for path in paths:
        cfg = read_json(path / "config.json") if (path / "config.json").exists() else {}
        run = RunInfo(path, cfg, read_json(path / "metrics.json"))
        run.options_diff = options_diff(run.method, dict(cfg.get("resolved_options")
                                                         or cfg.get("options") or {}))
        runs.append(run)
    seen: dict[str, int] = {}
    for i, run in enumerate(runs):
        base = run.method if not run.options_diff else f"{run.method} [{run.options_diff}]"
        if run.protocol != "few-shot":
            base += f" ({run.protocol})"
        seen[base] = seen.get(base, 0) + 1
        run.label = base if seen[base] == 1 else f"{base} #{seen[base]}"
        run.anchor = f"run-{i}"
    return runs


def group_runs(runs: Sequence[RunInfo]) -> dict[tuple[str, str, str], list[RunInfo]]:
    """Runs by (data set, protocol, shots), in first-seen order."""
    groups: dict[tuple[str, str, str], list[RunInfo]] = {}
    for run in runs:
        groups.setdefault(run.group, []).append(run)
    return groups


def ood_rows(run: RunInfo) -> list[dict[str, Any]]:
    """One row per (OOD kind, OOD set, score): the in-distribution set and each metric."""
    rows = []
    for key, kind in OOD_KINDS:
        block = run.metrics.get(key)
        if not isinstance(block, dict):
            continue
        for ood_set, scores in block.items():
            if ood_set == "in_distribution" or not isinstance(scores, dict):
                continue
            # the prediction's own scores first, then the method's own (``method:score``)
            for score, values in sorted(scores.items(), key=lambda kv: ":" in kv[0]):
                rows.append({"kind": kind, "id_set": block.get("in_distribution"),
                             "ood_set": ood_set, "score": score_name(score),
                             **{k: values.get(k) for k, _ in OOD_METRICS}})
    return rows


def ppc_row(run: RunInfo) -> dict[str, Any] | None:
    """The held-out PPC p-values of the run's in-distribution set, each with its verdict
    (``pass`` inside :data:`PPC_PASS`, else ``fail``); None for a run without checks."""
    block = run.metrics.get(run.main_set, {}) if run.main_set else {}
    ppc = block.get("ppc") if isinstance(block, dict) else None
    if not isinstance(ppc, dict):
        return None
    cells = []
    for key, _ in PPC_COLUMNS:
        p = ppc.get(key)
        if not isinstance(p, (int, float)) or p != p:  # missing or NaN
            cells.append({"text": "", "verdict": ""})
            continue
        low, high = PPC_PASS
        ok = p >= low if key in PPC_ONE_SIDED else low <= p <= high
        cells.append({"text": f"{p:.3f}", "verdict": "pass" if ok else "fail"})
    return {"set": run.main_set, "data": ppc.get("data", ""), "cells": cells}


#: the corrupted data set whose severities make the robustness curve
ROBUSTNESS_SET = "fashion-mnist-c"


def severity_points(run: RunInfo) -> list[dict[str, float]]:
    """Per severity of ``fashion-mnist-c`` (the mixed corruption) the run was evaluated on:
    accuracy, ECE and the max-prob. OOD AUROC against the in-distribution set; sorted by
    severity. A plain ``fashion-mnist-c`` is severity 3 (:func:`load_shifted`'s default)."""
    import inspect

    from pyro_clip.data.registry import parse_dataset_spec
    from pyro_clip.data.shifted import load_shifted

    params = inspect.signature(load_shifted).parameters
    default = params["corruption"].default, params["severity"].default
    points = {}
    for name, block in run.metrics.items():
        if not isinstance(block, dict) or "accuracy" not in block:
            continue
        try:
            base, kw = parse_dataset_spec(name)
        except ValueError:
            continue
        if base.lower() != ROBUSTNESS_SET or kw.get("corruption", default[0]) != default[0]:
            continue
        severity = int(kw.get("severity", default[1]))
        ood = run.metrics.get("ood", {}).get(name, {}).get("msp", {})
        points[severity] = {"severity": severity, "accuracy": block["accuracy"],
                            "ece": block.get("ece"), "auroc": ood.get("auroc")}
    return [points[s] for s in sorted(points)]
