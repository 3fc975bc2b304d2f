"""Study: kalman's prior variance and temperature chosen by k-fold cross-validation (not kept).

The default chooses ``(prior_var, T)`` by the NLL of the 4-per-class validation split (40
images on the demo data). Here the same grid is scored by the pooled held-out NLL of K-fold
cross-validation over train + validation (stratified folds; every fold fitted with default
options and that prior variance, its held-out NLL computed for every grid temperature from the
same draws), and the chosen pair is refitted on the training split alone, so the result
compares with the default and with linear-probe on equal training data. Test labels are only
scored. Writes ``benchmarks/results/<name>.json`` and ``<name>.md``.

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
from pyro_clip.inference.predictive import mc_log_predictive
from pyro_clip.types import FeatureSet

METRICS = ("accuracy", "ece", "nll")


def pooled(a: FeatureSet, b: FeatureSet) -> FeatureSet:
    """Train and validation as one labelled set (same classes, same feature kind)."""
    return FeatureSet({"joint": torch.cat([a.features["joint"], b.features["joint"]])},
                      torch.cat([a.labels, b.labels]), list(a.classnames), "train+val")


def folds(labels: torch.Tensor, k: int, seed: int) -> list[torch.Tensor]:
    """Stratified folds: each class's examples shuffled (seeded) and dealt round-robin."""
    gen = torch.Generator().manual_seed(seed)
    out: list[list[int]] = [[] for _ in range(k)]
    for c in labels.unique():
        idx = (labels == c).nonzero()[:, 0]
        for j, i in enumerate(idx[torch.randperm(len(idx), generator=gen)].tolist()):
            out[j % k].append(i)
    return [torch.tensor(sorted(f)) for f in out]


def subset(fs: FeatureSet, idx: torch.Tensor) -> FeatureSet:
    return FeatureSet({"joint": fs.features["joint"][idx]}, fs.labels[idx], list(fs.classnames),
                      fs.name)


def one_split(shots: int, seed: int, k: int) -> dict[str, Any]:
    cfg, backbone, fs = feature_sets(shots, seed)
    test, pool = fs["test"], pooled(fs["train"], fs["val"])
    scale = float(backbone.logit_scale)
    probe, _ = fitted("kalman", {}, fs, backbone, cfg, seed)  # the default, for its grids
    grid = [float(v) * scale**2 for v in probe.options["prior_var_grid"]]
    temps = [float(t) for t in probe.options["temperature_grid"]]
    empty = subset(pool, torch.tensor([], dtype=torch.long))
    cv: dict[tuple[float, float], float] = {}
    for pv in grid:
        totals = dict.fromkeys(temps, 0.0)
        for held in folds(pool.labels, k, seed):
            keep = torch.ones(len(pool), dtype=torch.bool)
            keep[held] = False
            m, _ = fitted("kalman", {"prior_var": pv, "temperature": 1.0,
                                     "prior_scale": scale},
                          {"train": subset(pool, keep.nonzero()[:, 0]), "val": empty},
                          backbone, cfg, seed)
            x = pool.features["joint"][held]
            with torch.no_grad():
                f = m._row_sampler(x, pool.classnames, 1.0)(slice(None))
            for t in temps:
                totals[t] -= float(mc_log_predictive(f / t, pool.labels[held]).sum())
        for t in temps:
            cv[(pv, t)] = totals[t] / len(pool)
    pv, t = min(cv, key=cv.__getitem__)
    chosen, _ = fitted("kalman", {"prior_var": pv, "temperature": t, "prior_scale": scale},
                       fs, backbone, cfg, seed)
    rows = {}
    for name, m in (("default", probe), ("cv", chosen)):
        with torch.no_grad():
            probs = m.predict(test.features["joint"], test.classnames).probs.double()
        rows[name] = {**scores(probs, test.labels), "prior_var": m.selected.get("prior_var"),
                      "temperature": m.selected.get("temperature")}
    lp, _ = fitted("linear-probe", {}, fs, backbone, cfg, seed)
    with torch.no_grad():
        rows["linear-probe"] = scores(lp.predict(test.features["joint"], test.classnames)
                                      .probs.double(), test.labels)
    print(shots, seed, rows, flush=True)
    return {"shots": shots, "seed": seed, "n_pool": len(pool), "fits": rows,
            "cv_nll": {f"{p:g}/{tt:g}": v for (p, tt), v in cv.items()}}


def markdown(res: dict[str, Any]) -> str:
    a = res["args"]
    names = ("default", "cv", "linear-probe")
    lines = [
        "# Kalman: prior variance and temperature by k-fold cross-validation (study)", "",
        f"Demo data; {a['folds']}-fold stratified CV over train + validation chooses "
        "`(prior_var, T)` from the default grids by pooled held-out NLL; the chosen pair is "
        "refitted on the training split (iterated default fit otherwise). Accuracy in %. "
        f"Command: `python -m benchmarks.bench_kalman_cv_selection --shots "
        f"{' '.join(map(str, a['shots']))} --seeds {' '.join(map(str, a['seeds']))}`.", "",
        "Mean over seeds (acc / ECE / NLL):", "",
        "| shots | kalman default (validation NLL) | kalman, CV-chosen | linear-probe |",
        "|---:|---|---|---|"]
    for k, row in res["means"].items():
        lines.append(f"| {k} | " + " | ".join(
            f"{row[n]['accuracy']:.1f} / {row[n]['ece']:.3f} / {row[n]['nll']:.3f}"
            for n in names) + " |")
    lines += ["", "| shots | seed | default (v, T) | CV-chosen (v, T) |", "|---:|---:|---|---|"]
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
    means = {str(k): {n: {m: statistics.fmean(r["fits"][n][m] for r in splits
                                               if r["shots"] == k) for m in METRICS}
                      for n in ("default", "cv", "linear-probe")} for k in args.shots}
    write_study(args.name, args, splits, means, markdown)


if __name__ == "__main__":
    main()
