"""bench_active's summary maths and its RESULTS.md section (hand-made curves, no fitting)."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.bench_active import markdown, summarise
from benchmarks.run_bench import result_sections


def _runs():
    acc = {("random", 1): [0.30, 0.40], ("random", 2): [0.20, 0.50],
           ("bald", 1): [0.30, 0.45], ("bald", 2): [0.20, 0.48]}
    return [{"strategy": s, "seed": k, "refit": {"accuracy": a[-1] + 0.01},
             "curve": [{"labels": 10 * (i + 1), "accuracy": v, "ece": v / 10, "nll": 1.0}
                       for i, v in enumerate(a)]} for (s, k), a in acc.items()]


def test_summary_is_mean_std_and_paired_difference_over_seeds(tmp_path):
    summary = summarise(_runs(), ("random", "bald"))
    last = summary["bald"]["budgets"][-1]
    assert last["labels"] == 20
    assert last["accuracy_mean"] == pytest.approx(np.mean([0.45, 0.48]))
    assert last["accuracy_std"] == pytest.approx(np.std([0.45, 0.48]))
    assert last["acc_minus_random_mean"] == pytest.approx(np.mean([0.05, -0.02]))
    assert last["beats_random_every_seed"] is False
    assert summary["bald"]["refit_accuracy_mean"] == pytest.approx(np.mean([0.46, 0.49]))
    text = markdown(summary, [1, 2], "active.png")
    assert "| 20 | 45.0 ± 5.0 | 46.5 ± 1.5 | +1.5 ± 3.5 |" in text
    (tmp_path / "active.md").write_text(text)
    assert result_sections(tmp_path) == text
