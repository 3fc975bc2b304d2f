"""Kalman's iterated posterior linearisation (``iterations``) against one EKF pass.

One pass of the extended Kalman filter linearises each example at the running mean, so its
final mean is not the posterior mode; ``iterations`` refilters from the prior with every
example linearised at the previous pass's mean (a Gauss-Newton step on the log posterior per
pass, Bell 1994), stopping when no training logit moves by ``iteration_tol``. For each split
both are fitted with otherwise default options (prior variance and predictive temperature
chosen on validation NLL; test labels only scored), next to ``linear-probe``.
Writes ``benchmarks/results/<name>.json`` and ``<name>.md``.

Run: ``python -m benchmarks.bench_kalman_iterations --shots 4 8 16 --seeds 1 2 3``.
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any

import torch

from benchmarks.bench_kalman_filter_temperature import val_nll
from benchmarks.bench_predictive import feature_sets
from benchmarks.bench_predictive_agreement import fitted, scores
from benchmarks.common import write_study

#: the fits compared: (label, method, options)
VARIANTS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("kalman, one pass", "kalman", {"iterations": 1}),
    ("kalman, iterated (default)", "kalman", {}),
    ("linear-probe", "linear-probe", {}),
)
METRICS = ("accuracy", "ece", "nll")


def one_split(shots: int, seed: int, covariance: str) -> dict[str, Any]:
    cfg, backbone, fs = feature_sets(shots, seed)
    test = fs["test"]
    fits = {}
    for label, method, options in VARIANTS:
        if method == "kalman":
            options = {**options, "covariance": covariance}
        m, fit_s = fitted(method, options, fs, backbone, cfg, seed)
        with torch.no_grad():
            probs = m.predict(test.features[m.feature_kind], test.classnames).probs.double()
        row: dict[str, Any] = {"fit_seconds": fit_s, **scores(probs, test.labels)}
        if method == "kalman":
            sel = m.selected
            row.update(val_nll=val_nll(m), prior_var=sel["prior_var"],
                       temperature=sel["temperature"],
                       passes=sel["iterations_run"][str(sel["prior_var"])])
        fits[label] = row
        print(shots, seed, label, row, flush=True)
    return {"shots": shots, "seed": seed, "fits": fits}


def markdown(res: dict[str, Any]) -> str:
    a = res["args"]
    labels = [v[0] for v in VARIANTS]
    lines = [
        "# Kalman: iterated posterior linearisation vs one EKF pass", "",
        "Demo data (embedded Fashion-MNIST, ConSE backbone, the suite's few-shot splits, 1,000 "
        f"test images); kalman (`covariance={a['covariance']}`) with default options except "
        "`iterations` (prior variance and temperature chosen on validation NLL), next to "
        "linear-probe. Accuracy in %. "
        f"Command: `python -m benchmarks.bench_kalman_iterations --shots "
        f"{' '.join(map(str, a['shots']))} --seeds {' '.join(map(str, a['seeds']))} "
        f"--covariance {a['covariance']}`.", "",
        "Mean over seeds (acc / ECE / NLL):", "",
        "| shots | " + " | ".join(labels) + " |", "|---:|" + "---|" * len(labels),
    ]
    for k, row in res["means"].items():
        lines.append(f"| {k} | " + " | ".join(
            f"{row[lb]['accuracy']:.1f} / {row[lb]['ece']:.3f} / {row[lb]['nll']:.3f}"
            for lb in labels) + " |")
    lines += ["", "Per split (acc / ECE / NLL; kalman: chosen prior variance, temperature, "
              "filter passes run, validation NLL):", "",
              "| shots | seed | " + " | ".join(labels) + " |",
              "|---:|---:|" + "---|" * len(labels)]
    for r in res["splits"]:
        cells = []
        for lb in labels:
            f = r["fits"][lb]
            cell = f"{f['accuracy']:.1f} / {f['ece']:.3f} / {f['nll']:.3f}"
            if "passes" in f:
                cell += (f" (v {f['prior_var']:.3g}, T {f['temperature']:g}, {f['passes']} "
                         f"passes, val {f['val_nll']:.3f})")
            cells.append(cell)
        lines.append(f"| {r['shots']} | {r['seed']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shots", nargs="+", type=int, default=[4, 8, 16])
    ap.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    ap.add_argument("--covariance", default="auto",
                    help="kalman's covariance structure (auto = full at 10 classes)")
    ap.add_argument("--name", default=None, help="result name (default: kalman_iterations, "
                    "with _<covariance> unless auto)")
    args = ap.parse_args(argv)
    if args.name is None:
        args.name = "kalman_iterations" + ("" if args.covariance == "auto"
                                           else f"_{args.covariance}")
    splits = [one_split(k, s, args.covariance) for k in args.shots for s in args.seeds]
    means = {str(k): {v[0]: {m: statistics.fmean(r["fits"][v[0]][m] for r in splits
                                                 if r["shots"] == k) for m in METRICS}
                      for v in VARIANTS} for k in args.shots}
    write_study(args.name, args, splits, means, markdown)


if __name__ == "__main__":
    main()
