"""Study: kalman's prior variance and temperature by k-fold cross-validation (``selection=cv``).

The default (``selection=val``) chooses ``(prior_var, T)`` by the NLL of the 4-per-class
validation split (40 images on the demo data). ``selection=cv`` scores the same grid by the
pooled held-out NLL of stratified k-fold cross-validation over train + validation and refits
the chosen pair on the training split alone, so both compare with linear-probe on equal
training data. Test labels are only scored. Writes ``benchmarks/results/<name>.json`` and
``<name>.md``.

Run: ``python -m benchmarks.bench_kalman_cv_selection --shots 4 8 16 --seeds 1 2 3``.
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any

import torch

from benchmarks.bench_predictive import feature_sets
from benchmarks.bench_predictive_agreement import fitted, scores
from benchmarks.common import write_study

METRICS = ("accuracy", "ece", "nll")
VARIANTS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("default", "kalman", {}),
    ("cv", "kalman", {"selection": "cv"}),
    ("linear-probe", "linear-probe", {}),
)


def one_split(shots: int, seed: int, k: int) -> dict[str, Any]:
    cfg, backbone, fs = feature_sets(shots, seed)
    test = fs["test"]
    rows = {}
    for name, method, options in VARIANTS:
        opts = {**options, "cv_folds": k} if name == "cv" else options
        m, fit_s = fitted(method, opts, fs, backbone, cfg, seed)
        with torch.no_grad():
            probs = m.predict(test.features["joint"], test.classnames).probs.double()
        rows[name] = {**scores(probs, test.labels), "fit_seconds": fit_s,
                      "prior_var": m.selected.get("prior_var"),
                      "temperature": m.selected.get("temperature")}
    print(shots, seed, rows, flush=True)
    return {"shots": shots, "seed": seed, "fits": rows}


def markdown(res: dict[str, Any]) -> str:
    a = res["args"]
    names = [v[0] for v in VARIANTS]
    lines = [
        "# Kalman: prior variance and temperature by k-fold cross-validation (study)", "",
        f"Demo data; `selection=cv` ({a['folds']}-fold stratified CV over train + validation, "
        "pooled held-out NLL over the default grids, the chosen pair refitted on the training "
        "split) against the default `selection=val` (40 validation images) and linear-probe. "
        "Accuracy in %. "
        f"Command: `python -m benchmarks.bench_kalman_cv_selection --shots "
        f"{' '.join(map(str, a['shots']))} --seeds {' '.join(map(str, a['seeds']))}`.", "",
        "Mean over seeds (acc / ECE / NLL; kalman fit seconds):", "",
        "| shots | kalman default (validation NLL) | kalman, `selection=cv` | linear-probe |",
        "|---:|---|---|---|"]
    for k, row in res["means"].items():
        cells = [f"{row[n]['accuracy']:.1f} / {row[n]['ece']:.3f} / {row[n]['nll']:.3f}"
                 + (f" ({row[n]['fit_seconds']:.0f} s)" if n != "linear-probe" else "")
                 for n in names]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    lines += ["", "| shots | seed | default (v, T) | `selection=cv` (v, T) |",
              "|---:|---:|---|---|"]
    for r in res["splits"]:
        d, c = r["fits"]["default"], r["fits"]["cv"]
        lines.append(f"| {r['shots']} | {r['seed']} | {d['accuracy']:.1f} / {d['ece']:.3f} / "
                     f"{d['nll']:.3f} ({d['prior_var']:.3g}, {d['temperature']:g}) | "
                     f"{c['accuracy']:.1f} / {c['ece']:.3f} / {c['nll']:.3f} "
                     f"({c['prior_var']:.3g}, {c['temperature']:g}) |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shots", nargs="+", type=int, default=[4, 8, 16])
    ap.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--name", default="kalman_cv_selection")
    args = ap.parse_args(argv)
    splits = [one_split(k, s, args.folds) for k in args.shots for s in args.seeds]
    keys = (*METRICS, "fit_seconds")
    means = {str(k): {n: {m: statistics.fmean(r["fits"][n][m] for r in splits
                                               if r["shots"] == k) for m in keys}
                      for n, _, _ in VARIANTS} for k in args.shots}
    write_study(args.name, args, splits, means, markdown)


if __name__ == "__main__":
    main()
