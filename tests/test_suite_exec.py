"""Suite execution without Ray: atomic run folders, attempts, the task list, config keys."""

from __future__ import annotations

import builtins
import json
import sys
from pathlib import Path

import pytest
import yaml

from pyro_clip.cli import main
from pyro_clip.errors import ConfigError
from pyro_clip.suite import expand, parse_suite, run_suite
from pyro_clip.suite.execute import build_tasks
from pyro_clip.suite.executors import EXECUTORS, get_executor_class
from pyro_clip.suite.executors.base import Executor
from pyro_clip.suite.tasks import PREPARE, RUN, Task, execute_run
from tests.conftest import TINY


def _suite(tmp_path, **kw):
    data = {"name": "t", "backbone": TINY, "methods": ["zero-shot"], "shots": [1],
            "seeds": [1], "protocols": ["few-shot"], "eval_datasets": [],
            "out": str(tmp_path / "runs"), "cache_dir": str(tmp_path / "cache"), **kw}
    return parse_suite(data)


def _run_task(run) -> Task:
    return Task(RUN, str(run.out), run.config.to_dict(), "none", 1)


def test_a_run_replaces_what_a_killed_attempt_left_and_records_its_attempt(tmp_path):
    (run,) = expand(_suite(tmp_path))
    final = run.out
    final.parent.mkdir(parents=True)
    stale = final.parent / f".{final.name}.tmp-dead1234"  # what a SIGKILLed attempt leaves
    (stale / "half").mkdir(parents=True)
    (final.parent / f".{final.name}.attempts").write_text("1\n")
    assert not run.done

    result = execute_run(_run_task(run))
    assert result.error is None and result.attempt == 2
    assert not stale.exists() and not (final.parent / f".{final.name}.attempts").exists()
    assert sorted(p.name for p in final.iterdir()) == [
        "config.json", "metrics.json", "predictions.npz", "run.log"]
    assert json.loads((final / "config.json").read_text())["out"] == str(final)
    log = (final / "run.log").read_text()
    assert "attempt 2" in log and log.rstrip().endswith("finished")
    assert [p.name for p in final.parent.iterdir()] == [final.name]  # nothing hidden left


def test_a_failed_run_keeps_only_its_traceback_and_log(tmp_path):
    (run,) = expand(_suite(tmp_path, datasets=["folder"], data_root=str(tmp_path / "absent")))
    run.out.mkdir(parents=True)
    (run.out / "metrics.json.partial").write_text("{")  # an older attempt's leftovers
    result = execute_run(_run_task(run))
    assert result.error is not None and "does not exist" in result.summary
    assert sorted(p.name for p in run.out.iterdir()) == ["error.txt", "run.log"]
    assert "does not exist" in (run.out / "error.txt").read_text()
    assert not run.done  # a resumed suite runs it again


def test_tasks_prepare_each_data_set_once_before_its_runs(tmp_path):
    suite = _suite(tmp_path, methods=["zero-shot", "linear-probe"], seeds=[1, 2],
                   protocols=["few-shot", "base-to-new"],
                   eval_datasets={"few-shot": ["fashion-mnist-c"], "base-to-new": []})
    runs = expand(suite)
    tasks = build_tasks(suite, runs)
    prepares = [t for t in tasks if t.kind == PREPARE]
    assert [t.key for t in prepares] == ["features:fashion-mnist"]
    assert tasks[:1] == prepares  # before every run
    # the prepare task encodes the images of exactly the pending runs (select_images)
    assert [c["out"] for c in prepares[0].run_configs] == [str(r.out) for r in runs]
    by_key = {t.key: t for t in tasks if t.kind == RUN}
    assert set(by_key) == {str(r.out) for r in runs}
    for r in runs:
        assert by_key[str(r.out)].needs == ("features:fashion-mnist",)


def test_prepare_encodes_only_the_runs_images(tmp_path, monkeypatch):
    from pyro_clip.features import cache as features
    from pyro_clip.suite.tasks import execute_prepare

    suite = _suite(tmp_path, methods=["zero-shot"], seeds=[1, 2], protocols=["few-shot"],
                   eval_datasets={"few-shot": []})
    runs = expand(suite)
    (prepare,) = [t for t in build_tasks(suite, runs) if t.kind == PREPARE]
    encoded: list[int] = []
    real = features.iter_features

    def counting(backbone, images, indices, *args, **kwargs):
        encoded.append(len(indices))
        return real(backbone, images, indices, *args, **kwargs)

    monkeypatch.setattr(features, "iter_features", counting)
    result = execute_prepare(prepare)
    assert result.error is None
    from pyro_clip.pipeline.config import RunConfig
    from pyro_clip.pipeline.run import select_images

    wanted = set()
    for c in prepare.run_configs:
        images = select_images(RunConfig.from_dict(c).resolved())
        for part in (images.train, images.val, images.test):
            wanted.update(part.item_keys())
    # each distinct image of the two runs once (1 shot + 1 val shot per class and seed, the
    # 1,000 test images), never the whole 800-image training split
    assert sum(encoded) == len(wanted) <= 2 * (10 + 10) + 1000


def test_local_pool_runs_equal_in_process_runs(tmp_path):
    one = _suite(tmp_path / "a", methods=["zero-shot", "linear-probe"], seeds=[1, 2])
    two = _suite(tmp_path / "b", methods=["zero-shot", "linear-probe"], seeds=[1, 2],
                 workers=2)
    first, second = run_suite(one, progress=False), run_suite(two, progress=False)
    assert first.failures == second.failures == {}
    assert second.executor["workers"] == 2 and set(second.prepare_seconds) == {
        "features:fashion-mnist"}
    for a, b in zip(expand(one), expand(two), strict=True):
        ma, mb = (json.loads((r.out / "metrics.json").read_text()) for r in (a, b))
        for m in (ma, mb):
            m.pop("fit_seconds"), m.pop("total_seconds")
        assert ma == mb


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"executor": "slurm"}, "unknown executor 'slurm'"),
        ({"resources": {"gpu": 1}}, "unknown resources key(s) ['gpu']"),
        ({"resources": {"cpus": 0}}, "resources.cpus must be an integer >= 1"),
        ({"resources": {"gpus": -1}}, "resources.gpus must be a number >= 0"),
        ({"resources": 4}, "resources must be a mapping"),
        ({"workers": 0}, "workers must be an integer >= 1"),
        ({"max_retries": -1}, "max_retries must be an integer >= 0"),
    ],
)
def test_executor_keys_are_validated(tmp_path, changes, needle):
    with pytest.raises(ConfigError) as err:
        _suite(tmp_path, **changes)
    assert needle in str(err.value)


def test_resources_parse_and_registry():
    s = parse_suite({"resources": {"cpus": 4, "gpus": 0.5}, "executor": "ray"})
    assert (s.resources.cpus, s.resources.gpus, s.executor) == (4, 0.5, "ray")
    assert set(EXECUTORS) == {"local", "ray"}
    assert issubclass(get_executor_class("local"), Executor)


def test_ray_executor_without_ray_fails_with_one_line_install_hint(tmp_path, monkeypatch,
                                                                    capsys):
    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ModuleNotFoundError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "ray", raising=False)
    monkeypatch.setattr(builtins, "__import__", no_ray)
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"backbone": TINY, "methods": ["zero-shot"], "shots": [1],
                                    "seeds": [1], "out": str(tmp_path / "runs")}))
    assert main(["suite", str(path), "--executor", "ray", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "pip install 'pyro-clip[ray]'" in err and "--executor local" in err
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").glob("**/*.json"))


def test_ray_tasks_carry_absolute_paths(tmp_path, monkeypatch):
    from pyro_clip.suite.executors.ray import absolute_paths

    monkeypatch.chdir(tmp_path)
    (run,) = expand(_suite(tmp_path, out="runs/rel", cache_dir="cache"))
    task = absolute_paths(_run_task(run))
    assert task.config["out"] == str(tmp_path / "runs/rel/fashion-mnist/few-shot/zero-shot/"
                                                "shots1/seed1")
    assert task.config["cache_dir"] == str(tmp_path / "cache")
    assert task.key == str(run.out) and task.config["data_root"] is None


def test_dry_run_summary_names_the_executor(tmp_path):
    from pyro_clip.suite import dry_run

    plan = dry_run(_suite(tmp_path, executor="ray", address="auto",
                          resources={"cpus": 4, "gpus": 0.5}))
    assert "executor ray at auto, 1 worker(s); per run 4 CPU(s), 0.5 GPU(s)" in plan.summary()


def test_local_pool_reruns_the_runs_of_a_killed_worker(tmp_path):
    from tests.suite_killer import Killer

    ref = _suite(tmp_path / "ref", methods=["zero-shot", "linear-probe"], seeds=[1, 2])
    suite = _suite(tmp_path / "pool", methods=["zero-shot", "linear-probe"], seeds=[1, 2],
                   workers=2, max_retries=2)
    assert run_suite(ref, progress=False).failures == {}
    killer = Killer(Path(suite.out), times=1)
    killer.start()
    outcome = run_suite(suite, progress=False)
    killer.stop.set()
    killer.join()
    assert killer.killed and outcome.failures == {}
    assert any(a > 1 for a in outcome.attempts.values())
    for a, b in zip(expand(ref), expand(suite), strict=True):
        ma, mb = (json.loads((r.out / "metrics.json").read_text()) for r in (a, b))
        for m in (ma, mb):
            m.pop("fit_seconds"), m.pop("total_seconds")
        assert ma == mb
        assert not list(b.out.parent.glob(f".{b.out.name}.tmp-*"))
