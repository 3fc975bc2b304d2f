"""Aggregate a suite's ``metrics.json`` files: mean ± std over seeds, as JSON and Markdown.

Per run, the headline numbers are read defensively (a metric absent from ``metrics.json``
is simply absent): ID accuracy, ECE and NLL on the in-distribution set (``test``, or ``base``
for base-to-new), accuracy on the first extra evaluation set (the shifted data; with several,
one ``accuracy@<set>`` column each), OOD AUROC
(any key containing ``auroc`` under ``ood``; the max-softmax-probability score is preferred
because every method has it), base / new / H and the fit time. Spread is the sample standard
deviation (ddof = 1) over seeds, ``None`` with a single seed.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pyro_clip.suite.config import SuiteConfig, SuiteRun
from pyro_clip.utils.io import atomic_write, read_json, write_json

#: (key, column title, shown as a percentage)
COLUMNS: tuple[tuple[str, str, bool], ...] = (
    ("accuracy", "ID acc", True),
    ("ece", "ECE", False),
    ("nll", "NLL", False),
    ("shift_accuracy", "shifted acc", True),
    ("ood_auroc", "OOD AUROC", True),
    ("base", "base", True),
    ("new", "new", True),
    ("h", "H", True),
    ("fit_seconds", "fit s", False),
)
PREFERRED_OOD_SCORE = "msp"


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Numeric leaves of nested dicts as ``{"a/b/c": value}`` (lists are skipped)."""
    flat: dict[str, float] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, path + "/"))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            flat[path] = float(value)
    return flat


def ood_auroc(metrics: Mapping[str, Any], ood_set: str | None) -> float | None:
    """AUROC of ``ood_set`` vs the ID set: the ``msp`` score's if present, else the first."""
    block = metrics.get("ood")
    if not isinstance(block, Mapping):
        return None
    if ood_set is not None and isinstance(block.get(ood_set), Mapping):
        block = block[ood_set]
    found = {k: v for k, v in _flatten(block).items() if "auroc" in k.lower()}
    if not found:
        return None
    preferred = [k for k in sorted(found) if PREFERRED_OOD_SCORE in k.split("/")]
    return found[(preferred or sorted(found))[0]]


def headline(metrics: Mapping[str, Any], eval_datasets: Sequence[str]) -> dict[str, float]:
    """The table's numbers for one run (see the module docstring); absent ones are left out."""
    row: dict[str, float] = {}
    main = metrics.get("test") or metrics.get("base") or {}
    for key in ("accuracy", "ece", "nll"):
        if isinstance(main.get(key), int | float):
            row[key] = float(main[key])
    present = [d for d in eval_datasets if isinstance(metrics.get(d), Mapping)]
    shifted = present[0] if present else None
    if shifted is not None and "accuracy" in metrics[shifted]:
        row["shift_accuracy"] = float(metrics[shifted]["accuracy"])
    if len(present) > 1:  # e.g. ImageNet -> V2 / Sketch / A / R: one column per set
        row.update({f"accuracy@{d}": float(metrics[d]["accuracy"])
                    for d in present if "accuracy" in metrics[d]})
    auroc = ood_auroc(metrics, shifted)
    if auroc is not None:
        row["ood_auroc"] = auroc
    for key in ("base", "new", "h"):
        value = (metrics.get("base_to_new") or {}).get(key)
        if isinstance(value, int | float):
            row[key] = float(value)
    if isinstance(metrics.get("fit_seconds"), int | float):
        row["fit_seconds"] = float(metrics["fit_seconds"])
    return row


def mean_std(values: Sequence[float]) -> dict[str, Any]:
    """``{"mean", "std", "n", "values"}``; std is the sample std (ddof=1), None for n < 2."""
    vals = [float(v) for v in values if v is not None and not math.isnan(v)]
    return {
        "mean": statistics.fmean(vals) if vals else None,
        "std": statistics.stdev(vals) if len(vals) > 1 else None,
        "n": len(vals),
        "values": vals,
    }


def aggregate(runs: Sequence[SuiteRun]) -> dict[str, Any]:
    """Group finished runs by (data set, protocol, method, shots); mean ± std over seeds."""
    groups: dict[tuple, dict[str, Any]] = {}
    missing = []
    for r in runs:
        path = r.out / "metrics.json"
        if not path.is_file():
            missing.append(str(r.out))
            continue
        row = headline(read_json(path), r.config.eval_datasets)
        g = groups.setdefault(r.group, {"seeds": [], "rows": []})
        g["seeds"].append(r.seed)
        g["rows"].append(row)
    out = []
    for (dataset, protocol, method, shots), g in groups.items():
        keys = list(dict.fromkeys(k for row in g["rows"] for k in row))
        out.append({
            "dataset": dataset, "protocol": protocol, "method": method, "shots": shots,
            "seeds": g["seeds"],
            "metrics": {k: mean_std([row[k] for row in g["rows"] if k in row]) for k in keys},
        })
    return {"groups": out, "missing_runs": missing}


def _cell(stat: Mapping[str, Any] | None, percent: bool) -> str:
    if not stat or stat.get("mean") is None:
        return ""
    scale, fmt = (100.0, "{:.1f}") if percent else (1.0, "{:.3f}")
    text = fmt.format(scale * stat["mean"])
    if stat.get("std") is not None:
        text += " ± " + fmt.format(scale * stat["std"])
    return text


def markdown(results: Mapping[str, Any]) -> str:
    """One table per (data set, protocol): rows method x shots; empty columns are dropped."""
    tables: dict[tuple[str, str], list[dict]] = {}
    for g in results["groups"]:
        tables.setdefault((g["dataset"], g["protocol"]), []).append(g)
    parts = []
    for (dataset, protocol), groups in tables.items():
        cols = [c for c in COLUMNS if any(c[0] in g["metrics"] for g in groups)]
        per_set = dict.fromkeys(k for g in groups for k in g["metrics"]
                                if k.startswith("accuracy@"))
        if per_set:  # several shifted sets: their accuracies replace the single column
            at = next(i for i, c in enumerate(cols) if c[0] == "shift_accuracy")
            cols[at:at + 1] = [(k, f"{k.split('@', 1)[1]} acc", True) for k in per_set]
        head = "| method | shots | seeds | " + " | ".join(t for _, t, _ in cols) + " |"
        rule = "|---|---:|---:|" + "---:|" * len(cols)
        body = [
            f"| {g['method']} | {g['shots']} | {len(g['seeds'])} | "
            + " | ".join(_cell(g["metrics"].get(k), pct) for k, _, pct in cols) + " |"
            for g in groups
        ]
        parts.append("\n".join([f"### {dataset}, {protocol}", "", head, rule, *body]))
    if results.get("missing_runs"):
        parts.append(f"{len(results['missing_runs'])} run(s) have no metrics.json yet.")
    if results.get("failures"):
        parts.append("Failed runs: " + "; ".join(f"`{k}`: {v}"
                                                 for k, v in results["failures"].items()))
    return "\n\n".join(parts) + "\n"


def write_results(suite: SuiteConfig, runs: Sequence[SuiteRun],
                  extra: Mapping[str, Any] | None = None) -> tuple[Path, Path]:
    """Write ``<results_stem>.json`` and ``.md``; ``extra`` (timings, failures) goes in the JSON."""
    results = {"suite": suite.name, "source": suite.source, "backbone": suite.backbone,
               "std": "sample standard deviation over seeds (ddof=1)",
               **aggregate(runs), **(extra or {})}
    stem = suite.results_stem
    json_path = write_json(stem.parent / f"{stem.name}.json", results)
    text = (f"## Suite {suite.name} (backbone {suite.backbone})\n\n"
            "Mean ± sample std over seeds; accuracies and AUROC in %.\n\n" + markdown(results))
    md_path = atomic_write(stem.parent / f"{stem.name}.md", lambda p: p.write_text(text))
    return json_path, md_path
