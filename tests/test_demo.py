"""``pyro-clip demo``: its runs in two worker processes equal the runs made one after another."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pyro_clip.errors import ConfigError, PyroClipError
from pyro_clip.pipeline.config import PROTOCOLS
from pyro_clip.suite.demo import demo_configs, demo_tasks, run_demo
from pyro_clip.suite.tasks import PREPARE, RUN
from tests.conftest import TINY

METHODS = ["zero-shot", "linear-probe"]


def _metrics(run) -> dict:
    m = json.loads((run / "metrics.json").read_text())
    m.pop("fit_seconds"), m.pop("total_seconds")  # wall-clock times
    return m


def test_demo_in_two_workers_equals_the_demo_in_one(tmp_path, capsys):
    cache = str(tmp_path / "cache")
    one = run_demo(tmp_path / "one", ["zero-shot"], shots=1, cache_dir=cache, backbone=TINY,
                   workers=1)
    two = run_demo(tmp_path / "two", ["zero-shot"], shots=1, cache_dir=cache, backbone=TINY,
                   workers=2)
    assert [r.name for r in one] == [r.name for r in two] == [
        "zero-shot", "zero-shot_base-to-new"]
    for a, b in zip(one, two, strict=True):
        assert _metrics(a) == _metrics(b)
        with np.load(a / "predictions.npz") as pa, np.load(b / "predictions.npz") as pb:
            assert sorted(pa) == sorted(pb)
            for key in pa:
                np.testing.assert_array_equal(pa[key], pb[key])
        # the full diagnostics of every run: idata and the figures the report shows
        assert (b / "idata.nc").is_file()
        assert {p.name for p in (a / "plots").iterdir()} == {
            p.name for p in (b / "plots").iterdir()}
    out = capsys.readouterr().out
    assert out.count("| zero-shot |") == 4 and out.count("report: ") == 2  # 2 rows a table
    assert (tmp_path / "two" / "report" / "report.html").is_file()


def test_few_shot_runs_are_queued_first_after_the_features(tmp_path):
    configs = demo_configs(tmp_path, METHODS, 16, 1, None, TINY, progress=False)
    tasks = demo_tasks(configs, prepare_threads=2)
    assert [t.kind for t in tasks] == [PREPARE] + [RUN] * 4
    assert tasks[0].threads == 2 and len(tasks[0].run_configs) == 4
    assert [t.config["protocol"] for t in tasks[1:]] == [PROTOCOLS[0]] * 2 + [PROTOCOLS[1]] * 2
    assert all(t.threads == 1 and t.diagnostics == "full" and t.needs == (tasks[0].key,)
               for t in tasks[1:])


def test_kalman_brings_its_mis_specified_contrast_run(tmp_path):
    configs = demo_configs(tmp_path, ["kalman"], 16, 1, None, TINY, progress=False)
    assert [(c.protocol, c.options.get("prior_var")) for c in configs] == [
        ("few-shot", None), ("base-to-new", None), ("few-shot", 1e4)]
    assert configs[-1].out == str(tmp_path / "kalman_prior-var-1e4")


def test_bad_workers_and_failed_runs_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="--workers must be >= 1"):
        run_demo(tmp_path / "d", ["zero-shot"], backbone=TINY, workers=0)
    with pytest.raises(PyroClipError, match=r"demo run\(s\) failed: zero-shot .*error.txt"):
        run_demo(tmp_path / "d", ["zero-shot"], backbone="open_clip:no-such-model", workers=1)
