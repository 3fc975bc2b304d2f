"""``pyro-clip report``: run folders compared side by side in one self-contained HTML file.

The Python here gathers data; the layout is the Jinja2 template ``templates/report.html.j2``.
``out/report.html`` embeds every image as base64 (open it anywhere, mail it), and the same
PNGs are written beside it; ``out/report.md`` keeps the Markdown table of
:mod:`pyro_clip.reporting.tables`. Only run-folder files are read (``config.json``,
``metrics.json``, ``predictions.npz``, ``idata.nc``, ``plots/*.png`` written by
:mod:`pyro_clip.diagnostics.hooks`), so any method plugs in.
"""

from __future__ import annotations

import base64
import re
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import torch

from pyro_clip.errors import DataError
from pyro_clip.reporting.compare import comparisons
from pyro_clip.reporting.figures import save_risk_coverage, save_robustness
from pyro_clip.reporting.gather import (
    OOD_METRICS,
    PPC_COLUMNS,
    PPC_PASS,
    RunInfo,
    group_runs,
    ood_rows,
    ppc_row,
    read_runs,
    severity_points,
)
from pyro_clip.reporting.tables import markdown_table, run_summary
from pyro_clip.utils.io import atomic_write, check_out_dir

#: per-run figures (from the run hook), in display order: file name -> caption
RUN_FIGURES = {
    "reliability.png": "Reliability diagram (ECE in each panel) and confidence histogram",
    "risk_coverage.png": "Risk-coverage (selective prediction)",
    "ood_*.png": "OOD score histograms: in-distribution vs each OOD set",
    "ppc.png": "Posterior predictive checks of p(y|x): per-bin accuracy, ECE discrepancy, "
               "per-class recall (observed vs replicated)",
}
#: bootstrap resamples for the calibration confidence intervals
BOOTSTRAP = 200

#: (metrics key, column title) of the diagnostics table, per in-distribution set
DIAG_COLUMNS = (
    ("accuracy", "acc %"),
    ("ece_equal_width", "ECE (width)"),
    ("ece_equal_mass", "ECE (mass)"),
    ("mce", "MCE"),
    ("classwise_ece", "cw-ECE"),
    ("nll", "NLL"),
    ("brier", "Brier"),
    ("aurc", "AURC"),
    ("e_aurc", "E-AURC"),
)
#: (run_summary key, column title) of the summary table; in % where PERCENT says so
SUMMARY_COLUMNS = (
    ("acc", "acc %"), ("ece", "ECE"), ("nll", "NLL"), ("brier", "Brier"),
    ("shift_acc", "shifted acc %"), ("ood_auroc", "OOD AUROC %"),
    ("base", "base %"), ("new", "new %"), ("h", "H %"), ("fit_s", "fit s"),
)
PERCENT = {"acc", "shift_acc", "ood_auroc", "base", "new", "h", "accuracy"}
TEMPLATE = "report.html.j2"


def _fmt(value: Any, percent: bool = False) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{100 * value:.1f}" if percent else f"{value:.3f}"
    return str(value)


def _figure(png: Path, out: Path, dest: str, alt: str, caption: str) -> dict[str, str]:
    """A figure for the template: the PNG copied to ``out/dest`` and embedded as base64."""
    target = out / dest
    if png.resolve() != target.resolve():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(png, target)
    data = base64.b64encode(png.read_bytes()).decode("ascii")
    return {"src": f"data:image/png;base64,{data}", "href": dest, "alt": alt,
            "caption": caption}


def bootstrap_calibration(
    probs: torch.Tensor, labels: torch.Tensor, n: int = BOOTSTRAP, seed: int = 0, bins: int = 15
) -> dict[str, tuple[float, float, float]]:
    """``{metric: (estimate, lo, hi)}``: percentile bootstrap 95% intervals (Efron 1979) of the
    equal-width/equal-mass ECE, NLL and Brier score over resampled test images.

    A resample is a count vector ``w`` over the images, so every additive metric is one matrix
    product for all resamples: ECE_width = sum_k |sum_i w_i 1[bin_i = k] (correct_i - conf_i)|
    / N over torchmetrics' bins (Guo 2017 eq. 3), NLL = sum_i w_i (-log p_i,y_i) / N and
    Brier = sum_i w_i ||p_i - e_y_i||^2 / N. Equal-mass bins depend on the resample's sort
    order and are computed per resample."""
    from pyro_clip.diagnostics.calibration import ece_equal_mass, equal_mass_gap
    from pyro_clip.diagnostics.metrics import (
        EPS,
        brier_score,
        expected_calibration_error,
        negative_log_likelihood,
    )

    probs = probs.double()
    p = probs.numpy()
    y = labels.numpy()
    size = len(y)
    conf, pred = p.max(-1), p.argmax(-1)
    correct = (pred == y).astype(float)
    # torchmetrics' equal-width bins: [k/B, (k+1)/B), and confidence exactly 1 in bin B
    bin_id = np.clip(np.searchsorted(np.linspace(0, 1, bins + 1), conf, side="right") - 1,
                     0, bins)
    per_bin = np.zeros((size, bins + 1))
    per_bin[np.arange(size), bin_id] = correct - conf
    nll_i = -np.log(np.clip(p[np.arange(size), y], EPS, None))
    brier_i = ((p - np.eye(p.shape[1])[y]) ** 2).sum(-1)

    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, size, (n, size), generator=gen).numpy()
    counts = np.zeros((n, size))
    np.add.at(counts, (np.repeat(np.arange(n), size), idx.ravel()), 1.0)
    reps = {
        "ECE (width)": np.abs(counts @ per_bin).sum(-1) / size,
        "ECE (mass)": np.array([equal_mass_gap(conf[i], correct[i], bins) for i in idx]),
        "NLL": counts @ nll_i / size,
        "Brier": counts @ brier_i / size,
    }
    estimates = {"ECE (width)": expected_calibration_error(probs, labels, bins),
                 "ECE (mass)": ece_equal_mass(probs, labels, bins),
                 "NLL": negative_log_likelihood(probs, labels),
                 "Brier": brier_score(probs, labels)}
    out = {}
    for name, values in reps.items():
        lo, hi = np.percentile(values, [2.5, 97.5])
        out[name] = (estimates[name], float(lo), float(hi))
    return out


def _main_predictions(run: Path) -> tuple[str, torch.Tensor, torch.Tensor] | None:
    path = run / "predictions.npz"
    if not path.exists():
        return None
    with np.load(path) as npz:
        main = next((k for k in ("test", "base") if f"{k}/probs" in npz), None)
        if main is None:
            return None
        return (main, torch.from_numpy(npz[f"{main}/probs"]).double(),
                torch.from_numpy(npz[f"{main}/labels"]).long())


def _ci(run: Path) -> dict[str, Any] | None:
    """Bootstrap 95% intervals of the calibration metrics on the in-distribution set."""
    found = _main_predictions(run)
    if found is None:
        return None
    main, probs, labels = found
    rows = [(name, *v) for name, v in bootstrap_calibration(probs, labels).items()]
    return {"set": main, "n": len(labels), "resamples": BOOTSTRAP, "rows": rows}


def _caveats(backbone: str) -> list[str]:
    notes = []
    if backbone.startswith("conse"):
        notes.append("ConSE backbone: not CLIP (offline MiniLM text tower); numbers are not "
                     "comparable with published CLIP results.")
    if "tiny" in backbone:
        notes.append("Randomly initialised test backbone: numbers are meaningless.")
    return notes


def _meta(run: RunInfo) -> list[tuple[str, Any]]:
    m = run.metrics
    return [
        ("method", run.method), ("options (vs defaults)", run.options_diff or "defaults"),
        ("backbone", run.backbone), ("data set", run.dataset), ("protocol", run.protocol),
        ("shots per class", run.shots), ("seed", run.seed),
        ("evaluation sets", ", ".join(k for k, v in m.items()
                                      if isinstance(v, dict) and "accuracy" in v)),
        ("training images", run.cfg.get("n_train", "?")),
    ]


def _run_figures(run: RunInfo, index: int, out: Path) -> list[dict[str, str]]:
    figures = []
    for pattern, caption in RUN_FIGURES.items():
        for png in sorted((run.path / "plots").glob(pattern)):
            figures.append(_figure(png, out, f"runs/{index:02d}_{run.path.name}/{png.name}",
                                   f"{run.label}: {png.stem}", caption))
    return figures


def _slug(text: str) -> str:
    return re.sub(r"[^\w]+", "_", text).strip("_")[:80]


def _group_context(key: tuple[str, str, str], runs: list[RunInfo]) -> dict[str, Any]:
    rows, diag, ood, ppc = [], [], [], []
    for run in runs:
        s = run_summary(run.path)
        rows.append({"label": run.label, "anchor": run.anchor, "backbone": run.backbone,
                     "seed": run.seed, "options": run.options_diff,
                     "cells": [_fmt(s.get(k), k in PERCENT) for k, _ in SUMMARY_COLUMNS]})
        block = run.metrics.get(run.main_set, {}) if run.main_set else {}
        diag.append({"label": run.label, "set": run.main_set or "",
                     "cells": [_fmt(block.get(k), k in PERCENT) for k, _ in DIAG_COLUMNS]})
        checks = ppc_row(run)
        if checks is not None:
            ppc.append({**checks, "label": run.label, "options": run.options_diff})
        for j, r in enumerate(ood_rows(run)):  # the run named once, on its first row
            ood.append({**r, "label": run.label if j == 0 else "",
                        "cells": [_fmt(r[k], True) for k, _ in OOD_METRICS]})
    # columns no run of the group fills (base/new/H under few-shot) are left out
    keep = [j for j in range(len(SUMMARY_COLUMNS)) if any(r["cells"][j] for r in rows)]
    for r in rows:
        r["cells"] = [r["cells"][j] for j in keep]
    return {"title": _group_title(key), "rows": rows,
            "columns": [SUMMARY_COLUMNS[j][1] for j in keep],
            "diag_rows": diag, "ood_rows": ood, "ppc_rows": ppc, "key": key}


def _group_title(key: tuple[str, str, str]) -> str:
    dataset, protocol, shots = key
    return f"{dataset} · {protocol} · {shots} shots"


def _group_figures(groups: dict, out: Path, curves_of: Callable[[RunInfo], Any | None],
                   save: Callable[[dict[str, Any], str, Path], Path], stem: str, alt: str,
                   heading: str, caption: str) -> list[dict[str, str]]:
    """One figure per group whose runs give any curve: ``curves_of(run)`` (None: the run has
    none) by run label, drawn by ``save(curves, heading, path)`` into ``out/<stem>_<group>.png``;
    ``heading`` and ``caption`` are formatted with the group's ``title``."""
    figures = []
    for key, runs in groups.items():
        curves = {run.label: c for run in runs if (c := curves_of(run)) is not None}
        if not curves:
            continue
        title = _group_title(key)
        name = f"{stem}_{_slug(title)}.png"
        png = save(curves, heading.format(title=title), out / name)
        figures.append(_figure(png, out, name, f"{alt}, {title}", caption.format(title=title)))
    return figures


def _risk_coverage_figures(groups: dict, out: Path) -> list[dict[str, str]]:
    """Risk-coverage of every run's in-distribution set, one figure per group."""
    from pyro_clip.diagnostics.selective import risk_coverage

    def curve(run: RunInfo) -> Any | None:
        found = _main_predictions(run.path)
        return None if found is None else risk_coverage(found[1], found[2])

    return _group_figures(groups, out, curve, save_risk_coverage, "compare_risk_coverage",
                          "risk-coverage", "risk-coverage: {title}",
                          "{title}: selective risk on the in-distribution set")


def _robustness_figures(groups: dict, out: Path) -> list[dict[str, str]]:
    """Accuracy, ECE and OOD AUROC against Fashion-MNIST-C severity, one figure per group
    whose runs were evaluated at two or more severities."""
    return _group_figures(
        groups, out, lambda run: pts if len(pts := severity_points(run)) >= 2 else None,
        save_robustness, "robustness", "robustness", "fashion-mnist-c severity: {title}",
        "{title}: accuracy, ECE and OOD AUROC vs severity")


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("pyro_clip.reporting", "templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
    )


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
    out = check_out_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    infos = read_runs([Path(r) for r in runs])
    table = markdown_table([run_summary(r.path) for r in infos])
    atomic_write(out / "report.md", lambda p: p.write_text("# pyro-clip report\n\n" + table + "\n"))
    groups = group_runs(infos)
    run_ctx = [{"label": r.label, "anchor": r.anchor, "path": str(r.path),
                "dataset": r.dataset, "protocol": r.protocol, "shots": r.shots,
                "seed": r.seed, "meta": _meta(r), "caveats": _caveats(r.backbone),
                "ci": _ci(r.path), "figures": _run_figures(r, i, out)}
               for i, r in enumerate(infos)]
    caveats = sorted({c for r in run_ctx for c in r["caveats"]})
    doc = _environment().get_template(TEMPLATE).render(
        runs=run_ctx,
        groups=[_group_context(k, v) for k, v in groups.items()],
        caveats=caveats,
        diag_columns=DIAG_COLUMNS, ood_columns=OOD_METRICS,
        ppc_columns=PPC_COLUMNS, ppc_pass=PPC_PASS,
        robustness=_robustness_figures(groups, out),
        comparisons=comparisons(infos),
        comparison_figures=_risk_coverage_figures(groups, out),
        markdown=table,
    )
    return atomic_write(out / "report.html", lambda p: p.write_text(doc))
