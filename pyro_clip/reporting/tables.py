"""Summary rows of run folders and their Markdown table (printed by demo and report)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pyro_clip.reporting.gather import options_diff
from pyro_clip.utils.io import read_json

COLUMNS = (
    ("method", "method"),
    ("protocol", "protocol"),
    ("acc", "accuracy"),
    ("ece", "ECE"),
    ("nll", "NLL"),
    ("brier", "Brier"),
    ("shift_acc", "shifted acc"),
    ("ood_auroc", "OOD AUROC"),
    ("base", "base"),
    ("new", "new"),
    ("h", "H"),
    ("fit_s", "fit s"),
)


def run_summary(run_dir: str | Path) -> dict[str, Any]:
    """Headline numbers of one run folder (reads ``config.json`` and ``metrics.json``)."""
    run_dir = Path(run_dir)
    cfg = read_json(run_dir / "config.json")
    m = read_json(run_dir / "metrics.json")
    main = m.get("test") or m.get("base") or {}
    diff = options_diff(cfg["method"], dict(cfg.get("options") or {}))
    row: dict[str, Any] = {
        "run": str(run_dir),
        # the options a user set that differ from the method's defaults tell runs apart
        "method": f"{cfg['method']} [{diff}]" if diff else cfg["method"],
        "protocol": cfg["protocol"],
        "acc": main.get("accuracy"),
        "ece": main.get("ece"),
        "nll": main.get("nll"),
        "brier": main.get("brier"),
        "fit_s": m.get("fit_seconds"),
    }
    evals = cfg.get("eval_datasets", [])
    if evals is None:  # an unresolved config: None means the data set's companions
        from pyro_clip.data import default_eval_datasets

        evals = default_eval_datasets(cfg.get("dataset", "fashion-mnist"))
    shifted = [k for k in evals if k in m]
    row["shift_acc"] = m[shifted[0]]["accuracy"] if shifted else None
    # in-distribution vs shifted inputs, scored by max softmax probability (diagnostics hook)
    msp = m.get("ood", {}).get(shifted[0], {}).get("msp", {}) if shifted else {}
    row["ood_auroc"] = msp.get("auroc")
    b2n = m.get("base_to_new", {})
    row.update(base=b2n.get("base"), new=b2n.get("new"), h=b2n.get("h"))
    return row


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """Rows -> Markdown; accuracies as percentages, blanks where a metric does not apply."""
    percent = {"acc", "shift_acc", "ood_auroc", "base", "new", "h"}

    def cell(key: str, value: Any) -> str:
        if value is None:
            return ""
        if isinstance(value, float):
            return f"{100 * value:.1f}" if key in percent else f"{value:.3f}"
        return str(value)

    head = "| " + " | ".join(title for _, title in COLUMNS) + " |"
    rule = "|" + "|".join("---" for _ in COLUMNS) + "|"
    body = ["| " + " | ".join(cell(k, r.get(k)) for k, _ in COLUMNS) + " |" for r in rows]
    return "\n".join([head, rule, *body])
