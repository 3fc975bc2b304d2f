"""The Ray executor on a local Ray cluster: a worker killed mid-suite, then retried.

One Ray cluster (head node with two worker slots, on this machine) is shared by the module.
The suite is small (zero-shot, linear-probe, kalman; 1 shot; 2 seeds; tiny backbone) so the
module stays around a minute on 2 cores.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pyro_clip.suite import expand, parse_suite, run_suite
from tests.conftest import TINY
from tests.suite_killer import Killer

ray = pytest.importorskip("ray", reason="Ray is optional: pip install 'pyro-clip[ray]'")

TIMING = {"fit_seconds", "total_seconds"}


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _suite(root: Path, name: str, **kw):
    return parse_suite({
        "name": name, "backbone": TINY, "methods": ["zero-shot", "linear-probe", "kalman"],
        "shots": [1], "seeds": [1, 2], "protocols": ["few-shot"],
        "eval_datasets": ["fashion-mnist-c"], "out": str(root / name),
        "cache_dir": str(root / "cache"), "workers": 2, "max_retries": 2, **kw})


def _metrics(run) -> dict:
    data = json.loads((run.out / "metrics.json").read_text())
    return {k: v for k, v in data.items() if k not in TIMING}


def test_killed_worker_is_retried_and_metrics_equal_an_uninterrupted_local_run(
        tmp_path, ray_cluster):
    local = _suite(tmp_path, "local", executor="local", workers=1)
    ref = run_suite(local, progress=False)
    assert ref.failures == {}

    suite = _suite(tmp_path, "ray", executor="ray")
    killer = Killer(Path(suite.out))
    killer.start()
    outcome = run_suite(suite, progress=False)
    killer.stop.set()
    killer.join()

    assert killer.killed, "no worker was killed: the test did not exercise a retry"
    assert outcome.failures == {}
    retried = {k for k, a in outcome.attempts.items() if a > 1}
    assert retried, f"killed {killer.killed} but no run reports a second attempt"
    for _, final in killer.killed:  # a killed attempt left no half-written folder behind
        assert not list(final.parent.glob(f".{final.name}.tmp-*"))
    for key in retried:
        assert "attempt 2" in (Path(key) / "run.log").read_text()
    for a, b in zip(expand(local), expand(suite), strict=True):
        assert b.done
        assert _metrics(b) == _metrics(a), b.out
        cfg = json.loads((b.out / "config.json").read_text())
        assert cfg["out"] == str(b.out)  # points at the final folder, not the temporary one
    log = (Path(suite.out) / "suite.log").read_text()
    assert "features:fashion-mnist: ready" in log and "attempt 2" in log

    again = run_suite(suite, progress=False)  # resume: every run is done
    assert again.skipped == len(expand(suite)) and again.seconds == {}


def test_cli_ray_executor_declares_resources_the_cluster_lacks(tmp_path, ray_cluster, capsys):
    import yaml

    from pyro_clip.cli import main

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({
        "backbone": TINY, "methods": ["zero-shot"], "shots": [1], "seeds": [1],
        "protocols": ["few-shot"], "out": str(tmp_path / "runs"),
        "resources": {"cpus": 1, "gpus": 1}}))
    assert main(["suite", str(path), "--executor", "ray", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "gpus: 1 but the Ray cluster has 0 GPU(s)" in err
