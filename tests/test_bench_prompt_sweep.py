"""The sweep summariser: paired per-seed differences and issue 14's target check."""

import numpy as np
import pytest

from benchmarks.bench_prompt_sweep import is_selected, reference, summarise, target_check


def _row(label, seed, new, options=None, part="coop"):
    return {"part": part, "label": label, "options": options or {}, "shots": 4, "seed": seed,
            "base": 0.5, "new": new, "h": 0.5, "fit_seconds": 1.0, "selected": None}


def test_paired_differences_and_target():
    coop = [0.50, 0.55, 0.61]
    ove = [0.53, 0.57, 0.64]  # +3, +2, +3 points on the same seeds: small paired spread
    rows = [_row("zero-shot", s, 0.54) for s in (1, 2, 3)]
    rows += [_row("coop", s, v) for s, v in zip((1, 2, 3), coop, strict=True)]
    label = "coop-ove-pg select=pseudo-new score=log-score"
    rows += [_row(label, s, v, {"select": "pseudo-new"}) for s, v in zip((1, 2, 3), ove,
                                                                          strict=True)]
    rows.append(_row("coop", 1, 0.99))  # a repeated (setting, seed): the first row counts
    summary = {s["label"]: s for s in summarise(rows)}
    diffs = 100 * (np.array(ove) - np.array(coop))
    s = summary[label]
    assert s["new"] == pytest.approx(100 * np.mean(ove), rel=1e-12)
    assert s["new_minus_ref"] == pytest.approx(diffs.mean(), rel=1e-12)
    assert s["new_minus_ref_std"] == pytest.approx(diffs.std(ddof=1), rel=1e-12)
    assert summary["coop"]["new_std"] == pytest.approx(100 * np.std(coop, ddof=1), rel=1e-12)
    (t,) = target_check(list(summary.values()))
    assert t["label"] == label and t["meets_zero_shot"]
    assert t["gap"] == pytest.approx(diffs.mean(), rel=1e-12)
    assert not t["meets_unpaired"]  # 2.7 points < the seed std of either (~5.5)
    assert t["meets_paired"]  # 2.7 > the std of the paired differences (0.6)


def test_references_and_selected_settings():
    assert reference(_row("coop-ove-pg augment=flip lam=1.0 alpha=1.0", 1, 0.5,
                          {"augment": "flip"})) == "coop augment=flip"
    assert reference(_row("cocoop-ove-pg lam=5.0 alpha=1.0", 1, 0.5, part="cocoop")) == "cocoop"
    assert is_selected("coop-ove-pg lam=0.2 alpha=1.0")  # the paper's default
    assert is_selected("cocoop-ove-pg lam=0.1 alpha=1.0")
    assert not is_selected("cocoop-ove-pg lam=0.2 alpha=1.0")
    assert not is_selected("coop-ove-pg lam=20.0 alpha=0.1")  # chosen by looking at test data
