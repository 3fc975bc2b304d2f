"""``pyro-clip report``: run folders compared side by side in one self-contained HTML file.

``out/report.html`` embeds every image as base64 (open it anywhere, mail it), and the same
PNGs are written beside it; ``out/report.md`` keeps the Markdown table of
:mod:`pyro_clip.reporting.tables`.
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
from pyro_clip.reporting.tables import markdown_table, run_summary
from pyro_clip.utils.io import atomic_write, check_out_dir, read_json

#: per-run figures (from the run hook), in display order: file name -> caption
RUN_FIGURES = {
    "reliability.png": "Reliability diagram and confidence histogram",
    "risk_coverage.png": "Risk-coverage (selective prediction)",
    "ood_*.png": "OOD score histograms (in-distribution vs shifted)",
    "ppc.png": "Posterior predictive checks of p(y|x): per-bin accuracy, ECE discrepancy, "
               "per-class recall (observed vs replicated)",
}
#: bootstrap resamples for the calibration confidence intervals
BOOTSTRAP = 200

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
.grid img,section img{max-width:100%;height:auto;border:1px solid #ddd}
section{border-top:2px solid #888;margin-top:2em;padding-top:0.5em}
figure{margin:0.8em 0} figcaption{font-size:0.85em;color:#555}
.caveat{background:#fff4d6;border-left:4px solid #e0a800;padding:0.3em 0.6em}
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
    """In-distribution calibration/selective metrics, one row per run (accuracy in %)."""
    head = ["run", "set", *[t for _, t in DIAG_COLUMNS]]
    rows = []
    for label, m in zip(labels, metrics, strict=True):
        main = _main_set(m)
        block = m.get(main, {}) if main else {}
        row = [html.escape(label), html.escape(main or "")]
        row += [_fmt(block.get(k), percent=(k == "accuracy")) for k, _ in DIAG_COLUMNS]
        rows.append(row)
    return head, rows


def _ood_rows(labels: list[str], metrics: list[dict[str, Any]]) -> tuple[list, list]:
    """Long format (one row per run, OOD set and score): AUROC and FPR@95 in %."""
    head = ["run", "in-distribution", "OOD set", "score", "AUROC %", "FPR@95 %"]
    rows = []
    for label, m in zip(labels, metrics, strict=True):
        ood = m.get("ood", {})
        for name, scores in ood.items():
            if name == "in_distribution":
                continue
            for score, v in scores.items():
                rows.append([html.escape(label), html.escape(str(ood.get("in_distribution"))),
                             html.escape(name), html.escape(score),
                             _fmt(v.get("auroc"), percent=True),
                             _fmt(v.get("fpr95"), percent=True)])
    return head, rows


def bootstrap_calibration(
    probs: torch.Tensor, labels: torch.Tensor, n: int = BOOTSTRAP, seed: int = 0
) -> dict[str, tuple[float, float, float]]:
    """``{metric: (estimate, lo, hi)}``: percentile bootstrap 95% intervals (Efron 1979) of the
    equal-width/equal-mass ECE, NLL and Brier score over resampled test images."""
    from pyro_clip.diagnostics.calibration import ece_equal_mass, ece_equal_width
    from pyro_clip.diagnostics.metrics import brier_score, negative_log_likelihood

    fns = {"ECE (width)": ece_equal_width, "ECE (mass)": ece_equal_mass,
           "NLL": negative_log_likelihood, "Brier": brier_score}
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(labels), (n, len(labels)), generator=gen)
    out = {}
    for name, fn in fns.items():
        reps = np.array([fn(probs[i], labels[i]) for i in idx])
        lo, hi = np.percentile(reps, [2.5, 97.5])
        out[name] = (fn(probs, labels), float(lo), float(hi))
    return out


def _run_meta(cfg: dict[str, Any], metrics: dict[str, Any]) -> str:
    """The run's settings and caveats as a small two-column table."""
    backbone = str(cfg.get("backbone", "?"))
    rows = [[k, html.escape(str(v))] for k, v in (
        ("method", cfg.get("method", "?")), ("backbone", backbone),
        ("data set", cfg.get("dataset", "?")), ("shots per class", cfg.get("shots", "?")),
        ("seed", cfg.get("seed", "?")), ("protocol", cfg.get("protocol", "?")),
        ("evaluation sets", ", ".join(k for k in metrics if isinstance(metrics[k], dict)
                                      and "accuracy" in metrics[k])),
        ("training images", cfg.get("n_train", "?")),
    )]
    caveats = []
    if backbone.startswith("conse"):
        caveats.append("ConSE backbone: not CLIP (offline MiniLM text tower); numbers are not "
                       "comparable with published CLIP results.")
    if "tiny" in backbone:
        caveats.append("Randomly initialised test backbone: numbers are meaningless.")
    note = "".join(f'<p class="caveat">{html.escape(c)}</p>' for c in caveats)
    return _html_table(["setting", "value"], rows) + note


def _ci_table(run: Path) -> str:
    """Bootstrap 95% intervals of the calibration metrics on the in-distribution set."""
    path = run / "predictions.npz"
    if not path.exists():
        return ""
    with np.load(path) as npz:
        main = next((k for k in ("test", "base") if f"{k}/probs" in npz), None)
        if main is None:
            return ""
        probs = torch.from_numpy(npz[f"{main}/probs"]).double()
        labels = torch.from_numpy(npz[f"{main}/labels"]).long()
    rows = [[html.escape(name), f"{est:.3f}", f"[{lo:.3f}, {hi:.3f}]"]
            for name, (est, lo, hi) in bootstrap_calibration(probs, labels).items()]
    return (f"<p>Calibration on <code>{main}</code> ({len(labels)} images), percentile "
            f"bootstrap 95% intervals over {BOOTSTRAP} resamples:</p>"
            + _html_table(["metric", "value", "95% CI"], rows))


def _comparison_figures(runs: list[Path], labels: list[str], out: Path) -> list[Path]:
    """Risk-coverage of every run's in-distribution set, one figure per number of classes
    (a 10-class and a 5-class set are not on one axis), from ``predictions.npz``."""
    from pyro_clip.diagnostics.plots import risk_coverage_figure, save_png
    from pyro_clip.diagnostics.selective import risk_coverage

    groups: dict[int, dict] = {}
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
        groups.setdefault(probs.shape[1], {})[label] = risk_coverage(probs, labels_)
    paths = []
    for n_classes, curves in sorted(groups.items()):
        fig = risk_coverage_figure(curves, f"risk-coverage, in-distribution set, "
                                           f"{n_classes}-class runs")
        name = "compare_risk_coverage.png" if len(groups) == 1 else \
            f"compare_risk_coverage_{n_classes}class.png"
        paths.append(save_png(fig, out / name))
    return paths


def find_runs(paths: Sequence[str | Path]) -> list[Path]:
    """Run folders (with ``metrics.json``) among ``paths``; a folder without one stands for
    the run folders directly inside it (``runs/demo``), sorted. Unknown paths are kept, so
    :func:`write_report` names them."""
    found: list[Path] = []
    for p in map(Path, paths):
        inner = sorted(c for c in p.iterdir() if (c / "metrics.json").exists()) if (
            p.is_dir() and not (p / "metrics.json").exists()) else []
        found.extend(inner or [p])
    return found


def write_report(runs: Sequence[str | Path], out: str | Path) -> Path:
    """Write ``out/report.html`` (self-contained) + PNGs + ``out/report.md``; returns the HTML.

    ``runs``: run folders, or folders holding run folders (:func:`find_runs`)."""
    runs = find_runs(runs)
    missing = [str(r) for r in runs if not (Path(r) / "metrics.json").exists()]
    if missing:
        raise DataError(
            f"not run folders (no metrics.json): {', '.join(missing)}; pass folders written "
            "by 'pyro-clip fit' or 'pyro-clip demo'"
        )
    run_paths = [Path(r) for r in runs]
    out = check_out_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    summaries = [run_summary(r) for r in run_paths]
    table = markdown_table(summaries)
    atomic_write(out / "report.md", lambda p: p.write_text("# pyro-clip report\n\n" + table + "\n"))

    seen: set[str] = set()
    cfgs = [read_json(r / "config.json") if (r / "config.json").exists() else {} for r in run_paths]
    labels = [_label(r, c, seen) for r, c in zip(run_paths, cfgs, strict=True)]
    metrics = [read_json(r / "metrics.json") for r in run_paths]

    from pyro_clip.reporting.tables import COLUMNS

    percent = {"acc", "shift_acc", "ood_auroc", "base", "new", "h"}
    summary_rows = [[_fmt(s.get(k), k in percent) for k, _ in COLUMNS] for s in summaries]
    parts = [
        "<h1>pyro-clip report</h1>",
        f"<p>{len(run_paths)} run(s): " + ", ".join(
            f"<code>{html.escape(str(r))}</code>" for r in run_paths) + "</p>",
        "<h2>Summary</h2>",
        _html_table([t for _, t in COLUMNS], summary_rows),
        "<h2>Calibration and selective prediction</h2>",
        "<p>Metrics on the in-distribution set (<code>test</code>, or <code>base</code> for "
        "base-to-new). Accuracy in %; ECE, MCE, NLL, Brier, AURC as fractions.</p>",
        _html_table(*_diagnostics_rows(labels, metrics)),
        "<h2>OOD detection</h2>",
        "<p>In-distribution vs each shifted evaluation set; scores are higher = more OOD. "
        "AUROC and FPR@95 in %.</p>",
        _html_table(*_ood_rows(labels, metrics)),
    ]
    for compare in _comparison_figures(run_paths, labels, out):
        parts += ["<h2>Risk-coverage, all runs</h2>",
                  f'<figure><a href="{compare.name}" target="_blank">'
                  f"{_img(compare, 'risk-coverage, all runs')}</a>"
                  "<figcaption>click to open full size</figcaption></figure>"]

    for i, (run, label, cfg, m) in enumerate(zip(run_paths, labels, cfgs, metrics,
                                                  strict=True)):
        sec = [f'<section id="run-{i}"><h2>{html.escape(label)}</h2>',
               f"<p><code>{html.escape(str(run))}</code></p>", _run_meta(cfg, m), _ci_table(run)]
        for pattern, caption in RUN_FIGURES.items():
            for png in sorted((run / "plots").glob(pattern)):
                dest = out / "runs" / f"{i:02d}_{run.name}" / png.name
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(png, dest)
                rel = dest.relative_to(out).as_posix()
                sec.append(f'<figure><a href="{html.escape(rel)}" target="_blank">'
                           f"{_img(png, f'{label}: {png.stem}')}</a><figcaption>"
                           f"{html.escape(caption)} (click to open full size)</figcaption>"
                           "</figure>")
        parts.append("".join(sec) + "</section>")
    parts += ["<h2>Markdown table</h2>", f"<pre>{html.escape(table)}</pre>"]
    doc = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>pyro-clip report</title><style>{CSS}</style></head><body>\n"
        + "\n".join(parts) + "\n</body></html>\n"
    )
    return atomic_write(out / "report.html", lambda p: p.write_text(doc))
