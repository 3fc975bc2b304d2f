"""benchmarks.calibration_targets: target verdicts and PPC pass/fail from hand-made suite
results (no fitting)."""

from __future__ import annotations

import json

import pytest

from benchmarks.calibration_targets import group_means, markdown, ppc_rows, target_rows
from benchmarks.run_bench import SECTION_FILES
from pyro_clip.suite.config import expand, load_suite


def _group(method: str, shots: int, **means: float) -> dict:
    return {"method": method, "shots": shots, "protocol": "few-shot", "dataset": "d",
            "metrics": {k: {"mean": v} for k, v in means.items()}}


RESULTS = {"groups": [
    _group("linear-probe", 4, accuracy=0.600, ece=0.050, nll=1.00, ood_auroc=0.70),
    # kalman: better ECE, worse NLL, exactly 0.5 points behind, higher AUROC
    _group("kalman", 4, accuracy=0.595, ece=0.040, nll=1.10, ood_auroc=0.75),
    # laplace: ECE tied (<= holds), NLL better
    _group("laplace", 4, accuracy=0.610, ece=0.050, nll=0.90, ood_auroc=0.69),
    _group("kalman", 8, accuracy=0.5, ece=0.1, nll=1.0, ood_auroc=0.8),  # no reference at 8
    {**_group("linear-probe", 16, accuracy=0.9, ece=0.0, nll=0.1, ood_auroc=0.5),
     "protocol": "base-to-new"},
]}


def test_targets_compare_each_bayesian_head_with_linear_probe():
    means = group_means(RESULTS)
    assert (("linear-probe", 16)) not in means  # other protocols are not mixed in
    rows = target_rows(means, [4, 8])
    verdict = {(r["method"], r["metric"]): r["met"] for r in rows}
    assert all(r["shots"] == 4 for r in rows)  # no linear-probe at 8 shots: nothing to check
    assert verdict == {("kalman", "ece"): True, ("kalman", "nll"): False,
                       ("laplace", "ece"): True, ("laplace", "nll"): True,
                       ("kalman", "accuracy"): True, ("kalman", "ood_auroc"): True}
    worse = target_rows(group_means({"groups": [
        RESULTS["groups"][0], _group("kalman", 4, accuracy=0.594, ood_auroc=0.70)]}), [4])
    verdict = {r["metric"]: r["met"] for r in worse if r["method"] == "kalman"}
    assert verdict["accuracy"] is False and verdict["ood_auroc"] is False
    assert verdict["ece"] is None  # a metric the run did not report is not judged
    text = markdown(means, rows, [], [4])
    assert "| 4 | kalman | nll | <= | 1.100 | 1.000 | **no** |" in text
    assert "5 of 6 targets met." in text
    assert "calibration_targets.md" in SECTION_FILES


def test_ppc_rows_read_each_runs_held_out_p_values(tmp_path):
    suite_file = tmp_path / "suite.yaml"
    suite_file.write_text(
        "name: t\nbackbone: conse\ndatasets: [fashion-mnist]\nprotocols: [few-shot]\n"
        f"methods: [kalman, linear-probe]\nshots: [4]\nseeds: [1, 2, 3]\nout: {tmp_path}/runs\n"
        f"results: {tmp_path}/res\n")
    p_values = {1: (0.5, 0.3), 2: (0.995, 0.5), 3: None}  # seed 3: unfinished run
    for run in expand(load_suite(suite_file)):
        pv = p_values[run.seed]
        if pv is None:
            continue
        run.out.mkdir(parents=True)
        ppc = {"p_accuracy": pv[0], "p_log_score": pv[1]}
        (run.out / "metrics.json").write_text(json.dumps({"test": {"ppc": ppc}}))
    rows = ppc_rows(suite_file, [4])
    assert [(r["method"], r["seed"], r["passes"]) for r in rows] == [
        ("kalman", 1, True), ("kalman", 2, False)]  # linear-probe has no posterior to check
    assert rows[1]["accuracy"] == pytest.approx(0.995)
    text = markdown({}, [], rows, [4])
    assert "| kalman | 4 | 2 | 0.995 | 0.500 | **no** |" in text
    assert "1 of 2 runs pass both checks." in text
