"""``pyro-clip report``: run folders compared side by side in one self-contained HTML file.

``out/report.html`` embeds every image as base64 (open it anywhere, mail it), and the same
PNGs are written beside it; ``out/report.md`` keeps the Markdown table of :mod:`pyro_clip.tables`.
Only run-folder files are read (``config.json``, ``metrics.json``, ``predictions.npz``,
``plots/*.png`` written by :mod:`pyro_clip.diagnostics.hooks`), so any method plugs in.
"""

from __future__ import annotations

import base64
import html
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pyro_clip.errors import DataError
from pyro_clip.io import atomic_write, read_json
from pyro_clip.tables import markdown_table, run_summary

#: per-run figures (from the run hook), in display order: file name -> caption
RUN_FIGURES = {
    "reliability.png": "Reliability diagram and confidence histogram",
    "risk_coverage.png": "Risk-coverage (selective prediction)",
    "ood_*.png": "OOD score histograms (in-distribution vs shifted)",
    "ppc.png": "Posterior predictive checks (ArviZ plot_ppc, plot_bpv)",
}

#: (metrics key, column title) of the diagnostics table, per in-distribution set
DIAG_COLUMNS = (
    ("accuracy", "acc"),
    ("ece_equal_width", "ECE (width)"),
    ("ece_equal_mass", "ECE (mass)"),
    ("mce", "MCE"),
    ("classwise_ece", "cw-ECE"),
    ("nll", "NLL"),
    ("brier", "Brier"),
    ("aurc", "AURC"),
    ("e_aurc", "E-AURC"),
)

CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:0.8em 0;font-size:0.9em}
th,td{border:1px solid #bbb;padding:0.25em 0.55em;text-align:right}
th{background:#eee} td.l{text-align:left}
.grid{display:grid;gap:0.8em;align-items:start}
.grid img{width:100%;height:auto;border:1px solid #ddd}
pre{background:#f6f6f6;padding:0.6em;overflow-x:auto}
"""


def _label(run: Path, cfg: dict[str, Any], seen: set[str]) -> str:
    base = f"{cfg.get('method', run.name)} ({cfg.get('protocol', '?')})"
    label, i = base, 2
    while label in seen:
        label, i = f"{base} #{i}", i + 1
    seen.add(label)
    return label


def _fmt(value: Any, percent: bool = False) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{100 * value:.1f}" if percent else f"{value:.3f}"
    return html.escape(str(value))


def _html_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join(
        "<tr>" + "".join(
            f'<td class="l">{c}</td>' if j == 0 else f"<td>{c}</td>" for j, c in enumerate(r)
        ) + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _img(png: Path, alt: str) -> str:
    data = base64.b64encode(png.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _main_set(metrics: dict[str, Any]) -> str | None:
    return next((k for k in ("test", "base") if k in metrics), None)


def _diagnostics_rows(labels: list[str], metrics: list[dict[str, Any]]) -> tuple[list, list]:
    scores = sorted({
        s for m in metrics for k, v in m.get("ood", {}).items() if k != "in_distribution"
        for s in v
    })
    head = ["run", "set", *[t for _, t in DIAG_COLUMNS]]
    head += [f"{s} {kind}" for s in scores for kind in ("AUROC", "FPR@95")]
    rows = []
    for label, m in zip(labels, metrics, strict=True):
        main = _main_set(m)
        block = m.get(main, {}) if main else {}
        ood = {k: v for k, v in m.get("ood", {}).items() if k != "in_distribution"}
        first_ood = next(iter(ood.values()), {})
        row = [html.escape(label), html.escape(main or "")]
        row += [_fmt(block.get(k), percent=(k == "accuracy")) for k, _ in DIAG_COLUMNS]
        for s in scores:
            block_s = first_ood.get(s, {})
            row += [_fmt(block_s.get("auroc")), _fmt(block_s.get("fpr95"))]
        rows.append(row)
    return head, rows


def _comparison_figure(runs: list[Path], labels: list[str], out: Path) -> Path | None:
    """Risk-coverage of every run's in-distribution set on one axis (from predictions.npz)."""
    from pyro_clip.diagnostics.plots import risk_coverage_figure, save_png
    from pyro_clip.diagnostics.selective import risk_coverage

    curves = {}
    for run, label in zip(runs, labels, strict=True):
        path = run / "predictions.npz"
        if not path.exists():
            continue
        with np.load(path) as npz:
            main = next((k for k in ("test", "base") if f"{k}/probs" in npz), None)
            if main is None:
                continue
            probs = torch.from_numpy(npz[f"{main}/probs"]).double()
            labels_ = torch.from_numpy(npz[f"{main}/labels"]).long()
        curves[label] = risk_coverage(probs, labels_)
    if not curves:
        return None
    fig = risk_coverage_figure(curves, "risk-coverage, in-distribution set, all runs")
    return save_png(fig, out / "compare_risk_coverage.png")


def write_report(runs: Sequence[str | Path], out: str | Path) -> Path:
    """Write ``out/report.html`` (self-contained) + PNGs + ``out/report.md``; returns the HTML."""
    missing = [str(r) for r in runs if not (Path(r) / "metrics.json").exists()]
    if missing:
        raise DataError(
            f"not run folders (no metrics.json): {', '.join(missing)}; pass folders written "
            "by 'pyro-clip fit' or 'pyro-clip demo'"
        )
    run_paths = [Path(r) for r in runs]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summaries = [run_summary(r) for r in run_paths]
    table = markdown_table(summaries)
    atomic_write(out / "report.md", lambda p: p.write_text("# pyro-clip report\n\n" + table + "\n"))

    seen: set[str] = set()
    cfgs = [read_json(r / "config.json") if (r / "config.json").exists() else {} for r in run_paths]
    labels = [_label(r, c, seen) for r, c in zip(run_paths, cfgs, strict=True)]
    metrics = [read_json(r / "metrics.json") for r in run_paths]

    from pyro_clip.tables import COLUMNS

    percent = {"acc", "shift_acc", "base", "new", "h"}
    summary_rows = [[_fmt(s.get(k), k in percent) for k, _ in COLUMNS] for s in summaries]
    parts = [
        "<h1>pyro-clip report</h1>",
        f"<p>{len(run_paths)} run(s): " + ", ".join(
            f"<code>{html.escape(str(r))}</code>" for r in run_paths) + "</p>",
        "<h2>Summary</h2>",
        _html_table([t for _, t in COLUMNS], summary_rows),
        "<h2>Calibration, selective prediction and OOD detection</h2>",
        "<p>Metrics on the in-distribution set (<code>test</code>, or <code>base</code> for "
        "base-to-new); OOD = the shifted evaluation set; OOD scores are higher = more OOD.</p>",
        _html_table(*_diagnostics_rows(labels, metrics)),
    ]
    compare = _comparison_figure(run_paths, labels, out)
    if compare is not None:
        parts += ["<h2>Risk-coverage, all runs</h2>",
                  f'<div class="grid" style="grid-template-columns:minmax(0,640px)">'
                  f"{_img(compare, 'risk-coverage, all runs')}</div>"]

    columns = f"grid-template-columns:repeat({len(run_paths)},minmax(0,1fr))"
    for pattern, caption in RUN_FIGURES.items():
        cells, any_found = [], False
        for run, label in zip(run_paths, labels, strict=True):
            pngs = sorted((run / "plots").glob(pattern))
            cell = [f"<h4>{html.escape(label)}</h4>"]
            for png in pngs:
                any_found = True
                dest = out / "runs" / f"{len(cells):02d}_{run.name}" / png.name
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(png, dest)
                cell.append(_img(png, f"{label}: {png.stem}"))
            if not pngs:
                cell.append("<p><em>not available for this run</em></p>")
            cells.append("<div>" + "".join(cell) + "</div>")
        if any_found:
            parts += [f"<h2>{html.escape(caption)}</h2>",
                      f'<div class="grid" style="{columns}">{"".join(cells)}</div>']
    parts += ["<h2>Markdown table</h2>", f"<pre>{html.escape(table)}</pre>"]
    doc = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>pyro-clip report</title><style>{CSS}</style></head><body>\n"
        + "\n".join(parts) + "\n</body></html>\n"
    )
    return atomic_write(out / "report.html", lambda p: p.write_text(doc))
