"""The calibration targets of the Bayesian heads against ``linear-probe``, read from a suite.

From a finished suite (default ``configs/bench/offline.yaml``, the one ``make bench`` runs) this
checks, per shot count on the few-shot protocol and on the mean over seeds: ``kalman`` and
``laplace`` each have ECE and NLL <= ``linear-probe``'s, ``kalman`` accuracy >= linear-probe's
minus ``ACC_MARGIN`` points, and ``kalman``'s OOD AUROC (max softmax probability) above
linear-probe's. It also lists the held-out PPC p-values of the accuracy and log-score checks
(``metrics.json`` -> ``test.ppc``) per run, a pass being ``PPC_LOW <= p <= PPC_HIGH``. Nothing
is fitted here and nothing is chosen: it reads the numbers the suite wrote. Writes
``calibration_targets.json`` and ``calibration_targets.md`` (a section of ``RESULTS.md``).

Run: ``python -m benchmarks.calibration_targets [--suite FILE] [--shots 4 8 16]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS_DIR, write_result
from pyro_clip.diagnostics.ppc import PASS_RANGE
from pyro_clip.suite.config import expand, load_suite
from pyro_clip.utils.io import atomic_write, read_json

ROOT = Path(__file__).resolve().parents[1]
REFERENCE, BAYES = "linear-probe", ("kalman", "laplace")
ACC_MARGIN = 0.5  # points of accuracy kalman may trail the reference by
PPC_LOW, PPC_HIGH = PASS_RANGE
PPC_CHECKS = ("accuracy", "log_score")
SHOTS = (4, 8, 16)


def group_means(results: dict[str, Any], protocol: str = "few-shot") -> dict[tuple, dict]:
    """``{(method, shots): {metric: mean}}`` of the suite's aggregated results."""
    return {(g["method"], g["shots"]): {k: v["mean"] for k, v in g["metrics"].items()}
            for g in results["groups"] if g["protocol"] == protocol}


def target_rows(means: dict[tuple, dict], shots: list[int]) -> list[dict[str, Any]]:
    """One row per (shots, target): the two numbers compared and whether it is met."""
    rows = []
    for k in shots:
        ref = means.get((REFERENCE, k))
        if ref is None:
            continue
        checks = [(m, key, "<=") for m in BAYES for key in ("ece", "nll")]
        checks += [("kalman", "accuracy", ">= ref - margin"), ("kalman", "ood_auroc", ">")]
        for method, key, rule in checks:
            got = means.get((method, k), {}).get(key)
            want = ref.get(key)
            if got is None or want is None:
                met = None
            elif rule == "<=":
                met = got <= want
            elif rule == ">":
                met = got > want
            else:
                met = 100 * got >= 100 * want - ACC_MARGIN
            rows.append({"shots": k, "method": method, "metric": key, "rule": rule,
                         "value": got, "reference": want, "met": met})
    return rows


def ppc_rows(suite_path: Path, shots: list[int]) -> list[dict[str, Any]]:
    """Held-out PPC p-values of every finished few-shot ``kalman``/``laplace`` run."""
    rows = []
    for run in expand(load_suite(suite_path)):
        if run.method not in BAYES or run.protocol != "few-shot" or run.shots not in shots:
            continue
        path = run.out / "metrics.json"
        if not path.is_file():
            continue
        ppc = (read_json(path).get("test") or {}).get("ppc") or {}
        ps = {c: ppc.get(f"p_{c}") for c in PPC_CHECKS}
        rows.append({"method": run.method, "shots": run.shots, "seed": run.seed, **ps,
                     "passes": all(p is not None and PPC_LOW <= p <= PPC_HIGH
                                   for p in ps.values())})
    return sorted(rows, key=lambda r: (r["method"], r["shots"], r["seed"]))


def _fmt(key: str, v: float | None) -> str:
    if v is None:
        return "-"
    return f"{100 * v:.1f}" if key in ("accuracy", "ood_auroc") else f"{v:.3f}"


def markdown(means: dict[tuple, dict], targets: list[dict], ppcs: list[dict],
             shots: list[int]) -> str:
    keys = ("accuracy", "ece", "nll", "ood_auroc")
    lines = ["## Calibration targets: kalman and laplace vs linear-probe (few-shot)", "",
             "Written by `python -m benchmarks.calibration_targets` from this suite's results "
             "(mean over seeds; accuracy and OOD AUROC in %; OOD AUROC of the max softmax "
             "probability, test vs the shifted set). Every hyper-parameter was chosen inside "
             "`fit` on train and validation; nothing here is chosen on test labels.", "",
             "| shots | method | acc | ECE | NLL | OOD AUROC |", "|---:|---|---:|---:|---:|---:|"]
    for k in shots:
        for m in (REFERENCE, *BAYES):
            if (m, k) in means:
                lines.append(f"| {k} | {m} | "
                             + " | ".join(_fmt(c, means[(m, k)].get(c)) for c in keys) + " |")
    lines += ["", f"Targets (met / not met; kalman accuracy may trail by {ACC_MARGIN} points):",
              "", "| shots | method | metric | rule | value | linear-probe | met |",
              "|---:|---|---|---|---:|---:|:-:|"]
    for r in targets:
        met = "-" if r["met"] is None else ("yes" if r["met"] else "**no**")
        lines.append(f"| {r['shots']} | {r['method']} | {r['metric']} | {r['rule']} | "
                     f"{_fmt(r['metric'], r['value'])} | {_fmt(r['metric'], r['reference'])} "
                     f"| {met} |")
    done = [r for r in targets if r["met"] is not None]
    lines += ["", f"{sum(r['met'] for r in done)} of {len(done)} targets met."]
    if ppcs:
        lines += ["", f"Held-out PPC p-values on the test labels (pass: {PPC_LOW} <= p <= "
                  f"{PPC_HIGH} for both checks; near 1 = over-confident, near 0 = "
                  "under-confident):", "", "| method | shots | seed | p accuracy | p log score "
                  "| pass |", "|---|---:|---:|---:|---:|:-:|"]
        for r in ppcs:
            lines.append(f"| {r['method']} | {r['shots']} | {r['seed']} | "
                         + " | ".join("-" if r[c] is None else f"{r[c]:.3f}"
                                      for c in PPC_CHECKS)
                         + f" | {'yes' if r['passes'] else '**no**'} |")
        lines += ["", f"{sum(r['passes'] for r in ppcs)} of {len(ppcs)} runs pass both checks."]
    return "\n".join(lines) + "\n"


def write(suite_path: Path, shots: tuple[int, ...] | list[int] = SHOTS,
          out_dir: Path = RESULTS_DIR) -> Path:
    """Write ``calibration_targets.{json,md}`` for the suite at ``suite_path``; returns the md."""
    suite = load_suite(suite_path)
    results = read_json(suite.results_stem.with_suffix(".json"))
    means = group_means(results)
    shots = list(shots)
    targets, ppcs = target_rows(means, shots), ppc_rows(suite_path, shots)
    write_result("calibration_targets", {"suite": str(suite_path), "targets": targets,
                                         "ppc": ppcs}, out_dir)
    text = markdown(means, targets, ppcs, shots)
    return atomic_write(out_dir / "calibration_targets.md", lambda p: p.write_text(text))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", type=Path, default=ROOT / "configs" / "bench" / "offline.yaml")
    ap.add_argument("--shots", nargs="+", type=int, default=list(SHOTS))
    args = ap.parse_args(argv)
    print(f"wrote {write(args.suite, args.shots)}")


if __name__ == "__main__":
    main()
