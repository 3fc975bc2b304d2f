"""Monte Carlo vs probit per Kalman structure, and held-out PPCs of the calibrated defaults.

On the demo's few-shot split (embedded Fashion-MNIST, ConSE features, the suite's split for
``--shots`` and ``--seed``) each ``kalman`` covariance structure is fitted once with default
options (``predictive=mc``: prior variance and temperature chosen on validation NLL of the
1,000-draw predictive). On that same fitted state and temperature the test set is scored three
ways: the default ``S = mc_samples`` draws ``1/S sum_s softmax(f_s / T)``, a larger Monte Carlo
reference (``--reference-draws``, drawn afresh) and the probit approximation
``softmax(m / T / sqrt(1 + pi/8 v / T^2))`` (MacKay 1992). The issue's bar for a fast
approximation: ``|ECE_probit - ECE_mc| <= 0.01`` and ``|acc_probit - acc_mc| <= 0.5`` points.

Held-out posterior predictive checks (:mod:`pyro_clip.diagnostics.ppc`) on the test labels:
``kalman`` and ``laplace`` with default options, and ``kalman`` with deliberately
mis-specified prior variances (``--bad-prior-var``, absolute: far too small and far too large),
each once with the temperature chosen on validation and once with ``temperature=1``. Writes
``benchmarks/results/<name>.json`` and ``<name>.md``.

Run: ``python -m benchmarks.bench_predictive_agreement [--shots 16] [--seed 1]``.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from benchmarks.bench_predictive import feature_sets
from benchmarks.common import RESULTS_DIR, machine, write_result
from pyro_clip.diagnostics.metrics import classification_metrics
from pyro_clip.diagnostics.ppc import PASS_RANGE, ppc_checks, ppc_summary
from pyro_clip.diagnostics.predictive import predictive_draws
from pyro_clip.methods import Method, MethodContext, create_method
from pyro_clip.runtime import Runtime
from pyro_clip.utils.io import atomic_write

STRUCTURES = ("full", "block", "diag", "lowrank", "kron")
ACC_TOL, ECE_TOL = 0.5, 0.01  # points of accuracy, ECE (the agreement bar)
PPC_KEYS = ("accuracy", "log_score", "class_frequency", "calibration")
CHUNK = 100  # test examples per reference Monte Carlo call


def fitted(method: str, options: dict[str, Any], fs: dict[str, Any], backbone: Any, cfg: Any,
           seed: int) -> tuple[Method, float]:
    """A method fitted on the run's train/val features, and its fit time in seconds."""
    m = create_method(method, **options)
    m.setup(MethodContext(backbone, cfg.templates, seed, None, False, Runtime()))
    t0 = time.perf_counter()
    m.fit(fs["train"], fs["val"])
    return m, time.perf_counter() - t0


def scores(probs: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    met = classification_metrics(probs, labels)
    return {"accuracy": 100 * met["accuracy"], "ece": met["ece"], "nll": met["nll"]}


def with_predictive(m: Method, kind: str, x: torch.Tensor, classnames: list[str]) -> torch.Tensor:
    """``m.predict`` probabilities with ``predictive=kind`` on the already fitted state."""
    old = m.options["predictive"]
    m.options["predictive"] = kind
    try:
        with torch.no_grad():
            return m.predict(x, classnames).probs.double()
    finally:
        m.options["predictive"] = old


def reference_probs(m: Any, x: torch.Tensor, classnames: list[str], draws: int) -> torch.Tensor:
    """Kalman's MC predictive with ``draws`` fresh weight draws of the same posterior and
    temperature (the method's chunked Monte Carlo predictive); its own draws are restored
    afterwards."""
    old_draws, old_s = m._draws, m.options["mc_samples"]
    m._draws, m.options["mc_samples"] = None, draws
    try:
        with torch.no_grad():
            return m._mc(x, classnames, replicates=False).probs
    finally:
        m._draws, m.options["mc_samples"] = old_draws, old_s


def agreement(m: Any, test: Any, ref_draws: int) -> dict[str, Any]:
    x, names, y = test.features[m.feature_kind], test.classnames, test.labels
    mc = scores(with_predictive(m, "mc", x, names), y)
    probit = scores(with_predictive(m, "probit", x, names), y)
    ref = scores(reference_probs(m, x, names, ref_draws), y) if ref_draws else None
    d_acc, d_ece = probit["accuracy"] - mc["accuracy"], probit["ece"] - mc["ece"]
    row = {"mc": mc, "probit": probit, "reference_mc": ref,
           "probit_minus_mc": {"accuracy": d_acc, "ece": d_ece, "nll": probit["nll"] - mc["nll"]},
           "probit_agrees": abs(d_acc) <= ACC_TOL and abs(d_ece) <= ECE_TOL}
    if ref is not None:
        row["mc_minus_reference"] = {k: mc[k] - ref[k] for k in mc}
    return row


def ppc_row(m: Method, test: Any, seed: int) -> dict[str, Any]:
    x, y = test.features[m.feature_kind], test.labels
    with torch.no_grad():
        pred = m.predict(x, test.classnames)
    draws = predictive_draws(pred.probs, y, test.classnames, pred.logit_samples, seed=seed)
    checks = ppc_checks(pred.probs, draws)
    out = {**scores(pred.probs.double(), y),
           "mean_confidence": 100 * float(pred.probs.double().max(-1).values.mean()),
           **ppc_summary(checks)}
    out["passes_accuracy_and_log_score"] = all(PASS_RANGE[0] <= out[f"p_{k}"] <= PASS_RANGE[1]
                                               for k in ("accuracy", "log_score"))
    return out


def selected(m: Method) -> dict[str, Any]:
    keys = ("prior_var", "temperature", "prior_precision", "tempered_passes")
    return {k: v for k, v in getattr(m, "selected", {}).items() if k in keys}


def markdown(res: dict[str, Any]) -> str:
    a = res["args"]
    lines = [
        f"# Monte Carlo vs probit per Kalman structure, and held-out PPCs ({a['shots']} shots, "
        f"seed {a['seed']})", "",
        "Demo data (embedded Fashion-MNIST, ConSE backbone, the suite's split), test set "
        f"{res['n_test']} images. Each structure fitted once with default options (MC "
        f"predictive, {res['mc_samples']} draws, prior variance and temperature chosen on "
        "validation NLL); the same state and temperature are then scored with the default "
        f"draws, a fresh {a['reference_draws']}-draw MC reference and the probit approximation. "
        f"Bar: |acc diff| <= {ACC_TOL} points and |ECE diff| <= {ECE_TOL}. "
        f"Command: `python -m benchmarks.bench_predictive_agreement --shots {a['shots']} "
        f"--seed {a['seed']}`.", "",
        "| structure | prior var | T | MC acc | MC ECE | MC NLL | probit acc | probit ECE | "
        "probit NLL | d acc | d ECE | agrees | ref acc | ref ECE |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:-:|---:|---:|",
    ]
    for r in res["agreement"]:
        mc, pb, d, ref = r["mc"], r["probit"], r["probit_minus_mc"], r["reference_mc"] or {}
        lines.append(
            f"| {r['structure']} | {r['selected']['prior_var']:.3g} | "
            f"{r['selected']['temperature']:g} | {mc['accuracy']:.1f} | {mc['ece']:.3f} | "
            f"{mc['nll']:.3f} | {pb['accuracy']:.1f} | {pb['ece']:.3f} | {pb['nll']:.3f} | "
            f"{d['accuracy']:+.1f} | {d['ece']:+.3f} | {'yes' if r['probit_agrees'] else 'no'} | "
            f"{ref.get('accuracy', float('nan')):.1f} | {ref.get('ece', float('nan')):.3f} |")
    lines += ["", "Held-out PPC p-values on the test labels (pass: 0.01 <= p <= 0.99; "
              "`calibration` is the confidence-histogram ECE discrepancy, "
              "`recall min` the smallest two-sided per-class recall p):", "",
              "| model | acc | ECE | NLL | mean conf | p accuracy | p log score | "
              "p class freq | p calibration | recall min | acc & log score pass |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|:-:|"]
    for name, r in res["ppc"].items():
        lines.append(
            f"| {name} | {r['accuracy']:.1f} | {r['ece']:.3f} | {r['nll']:.3f} | "
            f"{r['mean_confidence']:.1f} | {r['p_accuracy']:.3f} | {r['p_log_score']:.3f} | "
            f"{r['p_class_frequency']:.3f} | {r['p_calibration']:.3f} | "
            f"{r.get('p_recall_min_two_sided', float('nan')):.3f} | "
            f"{'yes' if r['passes_accuracy_and_log_score'] else 'no'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shots", type=int, default=16)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--structures", nargs="+", default=list(STRUCTURES), choices=STRUCTURES)
    ap.add_argument("--reference-draws", type=int, default=10000,
                    help="fresh MC draws of the reference predictive (0: skip)")
    ap.add_argument("--bad-prior-var", type=float, nargs="*", default=[1e-4, 1e4],
                    help="absolute prior variances of the mis-specified kalman models")
    ap.add_argument("--skip-ppc", action="store_true")
    ap.add_argument("--name", default="predictive_agreement")
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)
    cfg, backbone, fs = feature_sets(args.shots, args.seed)
    test = fs["test"]
    res: dict[str, Any] = {"args": vars(args), "n_test": len(test), "agreement": [], "ppc": {}}
    models: dict[str, Method] = {}
    for kind in args.structures:
        m, fit_s = fitted("kalman", {"covariance": kind}, fs, backbone, cfg, args.seed)
        res["mc_samples"] = m.options["mc_samples"]
        models[kind] = m
        row = {"structure": kind, "fit_seconds": fit_s, "selected": selected(m),
               **agreement(m, test, args.reference_draws)}
        res["agreement"].append(row)
        print(row, flush=True)
    if not args.skip_ppc:
        default, _ = fitted("kalman", {}, fs, backbone, cfg, args.seed)
        suites = {
            f"kalman defaults ({default.options['covariance']})": default,
            "laplace defaults": fitted("laplace", {}, fs, backbone, cfg, args.seed)[0],
        }
        for pv in args.bad_prior_var:  # mis-specified on purpose; T chosen on val, then T = 1
            for opts in ({"prior_var": pv}, {"prior_var": pv, "temperature": 1.0}):
                label = ", ".join(f"{k}={v:g}" for k, v in opts.items())
                suites[f"kalman {label}"] = fitted("kalman", opts, fs, backbone, cfg,
                                                   args.seed)[0]
        for name, m in suites.items():
            res["ppc"][name] = {**ppc_row(m, test, args.seed), "selected": selected(m)}
            print(name, res["ppc"][name], flush=True)
    res["machine"] = machine()
    write_result(args.name, res)
    text = markdown(res)
    atomic_write(RESULTS_DIR / f"{args.name}.md", lambda path: path.write_text(text))


if __name__ == "__main__":
    main()
