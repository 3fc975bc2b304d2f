"""Kalman's accuracy with the likelihood temperature inside the filter, chosen on validation.

The default filter assimilates ``Cat(softmax(W x))`` and only the predictive is tempered,
``softmax(f_s / T)``. Filtering the tempered likelihood ``Cat(softmax(W x / T_f))`` instead is,
with ``W' = W / T_f``, the same filter with the prior ``N(s t / T_f, v s^2 / T_f^2)``: the
zero-shot prior at logit scale ``s / T_f`` with the prior-variance grid in units of that scale
squared, i.e. ``prior_scale = s / T_f``. For each ``T_f`` in ``--filter-temperatures`` the
default fit (prior variance and predictive temperature chosen on validation NLL) is run; the
``T_f`` whose chosen fit has the smallest validation NLL is "selected". Test labels are only
scored, never used to choose. Writes ``benchmarks/results/<name>.json`` and ``<name>.md``.

Run: ``python -m benchmarks.bench_kalman_filter_temperature --shots 4 8 16 --seeds 1 2 3``.
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any

import torch

from benchmarks.bench_predictive import feature_sets
from benchmarks.bench_predictive_agreement import fitted, scores
from benchmarks.common import write_study


def val_nll(m: Any) -> float:
    """The validation NLL of the fit's chosen prior variance and temperature."""
    sel = m.selected
    return float(sel["val_nll_by_prior_var_and_temperature"][str(sel["prior_var"])]
                 [str(sel["temperature"])])


def one_split(shots: int, seed: int, temps: list[float]) -> dict[str, Any]:
    cfg, backbone, fs = feature_sets(shots, seed)
    test, s = fs["test"], float(backbone.logit_scale)
    fits = []
    for tf in temps:
        m, fit_s = fitted("kalman", {} if tf == 1.0 else {"prior_scale": s / tf}, fs, backbone,
                          cfg, seed)
        with torch.no_grad():
            probs = m.predict(test.features[m.feature_kind], test.classnames).probs.double()
        fits.append({"filter_temperature": tf, "val_nll": val_nll(m), "fit_seconds": fit_s,
                     "prior_var": m.selected["prior_var"],
                     "temperature": m.selected["temperature"], **scores(probs, test.labels)})
        print(shots, seed, fits[-1], flush=True)
    chosen = min(fits, key=lambda f: f["val_nll"])
    default = next(f for f in fits if f["filter_temperature"] == 1.0)
    return {"shots": shots, "seed": seed, "fits": fits, "selected": chosen, "default": default}


def markdown(res: dict[str, Any]) -> str:
    a = res["args"]
    lines = [
        "# Kalman: likelihood temperature inside the filter, chosen on validation", "",
        "Demo data (embedded Fashion-MNIST, ConSE backbone, the suite's few-shot splits), "
        "kalman defaults otherwise (prior variance and predictive temperature chosen on "
        "validation NLL). `T_f` is the filter's likelihood temperature (`prior_scale = s / "
        "T_f`); *selected* is the `T_f` with the smallest validation NLL. Test accuracy in %. "
        f"Command: `python -m benchmarks.bench_kalman_filter_temperature --shots "
        f"{' '.join(map(str, a['shots']))} --seeds {' '.join(map(str, a['seeds']))} "
        f"--filter-temperatures {' '.join(f'{t:g}' for t in a['filter_temperatures'])}`.", "",
        "| shots | seed | " + " | ".join(f"T_f={t:g} acc / ECE / NLL (val NLL)"
                                          for t in a["filter_temperatures"])
        + " | selected T_f |",
        "|---:|---:|" + "---|" * len(a["filter_temperatures"]) + "---:|",
    ]
    for r in res["splits"]:
        cells = [f"{f['accuracy']:.1f} / {f['ece']:.3f} / {f['nll']:.3f} ({f['val_nll']:.3f})"
                 for f in r["fits"]]
        lines.append(f"| {r['shots']} | {r['seed']} | " + " | ".join(cells)
                     + f" | {r['selected']['filter_temperature']:g} |")
    lines += ["", "Mean over seeds, default (`T_f = 1`) vs selected on validation:", "",
              "| shots | default acc | selected acc | default ECE | selected ECE | default NLL "
              "| selected NLL |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for k, row in res["means"].items():
        lines.append(f"| {k} | {row['default']['accuracy']:.1f} | "
                     f"{row['selected']['accuracy']:.1f} | {row['default']['ece']:.3f} | "
                     f"{row['selected']['ece']:.3f} | {row['default']['nll']:.3f} | "
                     f"{row['selected']['nll']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shots", nargs="+", type=int, default=[4, 8, 16])
    ap.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    ap.add_argument("--filter-temperatures", nargs="+", type=float,
                    default=[1.0, 0.5, 0.25, 0.1])
    ap.add_argument("--name", default="kalman_filter_temperature")
    args = ap.parse_args(argv)
    if 1.0 not in args.filter_temperatures:
        ap.error("--filter-temperatures must include 1 (the default it is compared with)")
    splits = [one_split(k, s, args.filter_temperatures) for k in args.shots for s in args.seeds]
    means = {}
    for k in args.shots:
        rows = [r for r in splits if r["shots"] == k]
        means[str(k)] = {which: {m: statistics.fmean(r[which][m] for r in rows)
                                 for m in ("accuracy", "ece", "nll")}
                         for which in ("default", "selected")}
    write_study(args.name, args, splits, means, markdown)


if __name__ == "__main__":
    main()
