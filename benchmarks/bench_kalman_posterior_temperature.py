"""Study: a posterior temperature for kalman's predictive, chosen on validation (not kept).

The fitted kalman posterior ``N(mu, P)`` is used with its covariance scaled, ``N(mu, tau P)``
(a cold posterior, Wenzel et al. 2020, for ``tau < 1``; the mean -- and so the accuracy --
unchanged, as laplace-torch's post-hoc prior-precision tuning leaves the MAP), and ``tau`` is
chosen jointly with the likelihood temperature ``T`` by validation NLL, after the default fit
(prior variance chosen as usual). The weight draws are rescaled about the mean,
``mu + sqrt(tau) (theta_s - mu)``. Test labels are only scored. Writes
``benchmarks/results/<name>.json`` and ``<name>.md``.

Run: ``python -m benchmarks.bench_kalman_posterior_temperature --shots 4 8 16 --seeds 1 2 3``.
"""

from __future__ import annotations

import argparse
import math
import statistics
from typing import Any

import torch

from benchmarks.bench_predictive import feature_sets
from benchmarks.bench_predictive_agreement import fitted, scores
from benchmarks.common import write_study
from pyro_clip.inference.predictive import choose_temperature

TAUS = (1.0, 0.5, 0.25, 0.1, 0.05, 0.02, 0.01)


def one_split(shots: int, seed: int) -> dict[str, Any]:
    cfg, backbone, fs = feature_sets(shots, seed)
    test, val = fs["test"], fs["val"]
    m, _ = fitted("kalman", {}, fs, backbone, cfg, seed)
    kind = m.feature_kind
    base, mean = m._weight_draws()[0].clone(), m.state.mean
    rows = []
    for tau in TAUS:
        m._draws = mean + math.sqrt(tau) * (base - mean)
        t, nlls = choose_temperature(m._row_sampler(val.features[kind], val.classnames, 1.0),
                                     val.labels, m.options["temperature_grid"],
                                     chunk=len(val))
        m.temperature = t
        with torch.no_grad():
            probs = m.predict(test.features[kind], test.classnames).probs.double()
        rows.append({"tau": tau, "temperature": t, "val_nll": nlls[str(t)],
                     **scores(probs, test.labels)})
        print(shots, seed, rows[-1], flush=True)
    return {"shots": shots, "seed": seed, "fits": rows,
            "selected": min(rows, key=lambda r: r["val_nll"]),
            "default": rows[0]}


def markdown(res: dict[str, Any]) -> str:
    a = res["args"]
    lines = [
        "# Kalman: a posterior temperature chosen on validation (study, not the default)", "",
        "Demo data, default kalman fit (iterated, prior variance chosen on validation NLL); "
        "the predictive then uses `N(mu, tau P)`, `tau` chosen with the likelihood "
        "temperature `T` by validation NLL (40 validation images per split). Accuracy in %. "
        f"Command: `python -m benchmarks.bench_kalman_posterior_temperature --shots "
        f"{' '.join(map(str, a['shots']))} --seeds {' '.join(map(str, a['seeds']))}`.", "",
        "| shots | seed | default (tau = 1): acc / ECE / NLL | selected tau, T | selected: acc / "
        "ECE / NLL | val NLL default -> selected |", "|---:|---:|---|---|---|---|"]
    for r in res["splits"]:
        d, s = r["default"], r["selected"]
        lines.append(f"| {r['shots']} | {r['seed']} | {d['accuracy']:.1f} / {d['ece']:.3f} / "
                     f"{d['nll']:.3f} | {s['tau']:g}, {s['temperature']:g} | "
                     f"{s['accuracy']:.1f} / {s['ece']:.3f} / {s['nll']:.3f} | "
                     f"{d['val_nll']:.3f} -> {s['val_nll']:.3f} |")
    lines += ["", "Mean over seeds:", "", "| shots | default acc / ECE / NLL | selected acc / "
              "ECE / NLL |", "|---:|---|---|"]
    for k, row in res["means"].items():
        d, s = row["default"], row["selected"]
        lines.append(f"| {k} | {d['accuracy']:.1f} / {d['ece']:.3f} / {d['nll']:.3f} | "
                     f"{s['accuracy']:.1f} / {s['ece']:.3f} / {s['nll']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shots", nargs="+", type=int, default=[4, 8, 16])
    ap.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    ap.add_argument("--name", default="kalman_posterior_temperature")
    args = ap.parse_args(argv)
    splits = [one_split(k, s) for k in args.shots for s in args.seeds]
    means = {str(k): {w: {m: statistics.fmean(r[w][m] for r in splits if r["shots"] == k)
                          for m in ("accuracy", "ece", "nll")}
                      for w in ("default", "selected")} for k in args.shots}
    write_study(args.name, args, splits, means, markdown)


if __name__ == "__main__":
    main()
