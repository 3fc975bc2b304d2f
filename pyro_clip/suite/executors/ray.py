"""Ray executor: each suite run is one Ray task with the suite's declared resources.

``ray.init(address)`` joins a running cluster (``address: auto``, ``ray://head:10001``, or
``$RAY_ADDRESS``); without one it starts a local cluster with ``workers x resources.cpus``
CPUs, so ``workers`` runs go in parallel as with the local executor. Every task is
``.options(num_cpus=cpus, num_gpus=gpus, max_retries=max_retries)``: Ray re-runs a task whose
worker process or node died, up to ``max_retries`` times (``retry_exceptions`` stays off: a
run that raises is deterministic and is reported, not repeated). A run task receives the
object refs of its data sets' prepare tasks as arguments, so Ray starts it only after
their features are in the cache, and no two tasks encode the same entry at once. Workers must
import the same ``pyro_clip`` and see the same run and cache folders (a shared file system).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from pyro_clip.errors import ConfigError
from pyro_clip.suite.config import SuiteConfig
from pyro_clip.suite.executors.base import Executor, Report
from pyro_clip.suite.tasks import Task, TaskResult, execute_task

INSTALL_HINT = ("the ray executor needs Ray: pip install 'pyro-clip[ray]' "
                "(or pip install ray), or use --executor local")


def import_ray() -> Any:
    """``import ray``, or a :class:`ConfigError` with the one-line install hint."""
    try:
        import ray
    except ImportError as exc:
        raise ConfigError(INSTALL_HINT) from exc
    return ray


def absolute_paths(task: Task) -> Task:
    """``out``, ``cache_dir`` and ``data_root`` made absolute against the driver's folder.

    Ray workers of a cluster started elsewhere (``ray start``) do not share the driver's
    working directory, so a relative ``out: runs/...`` would land somewhere else.
    """
    config = dict(task.config)
    for key in ("out", "cache_dir", "data_root"):
        if config.get(key):
            config[key] = os.path.abspath(os.path.expanduser(config[key]))
    return replace(task, config=config)


def _ray_task(task: Task, *_prepared: Any) -> TaskResult:
    """The remote function; ``_prepared`` are the prepare results Ray waited for."""
    return execute_task(task, capture_output=True)


class RayExecutor(Executor):
    """See the module docstring."""

    name = "ray"

    def __init__(self, suite: SuiteConfig) -> None:
        super().__init__(suite)
        self.ray = import_ray()
        self.cluster: dict[str, float] = {}

    def _connect(self) -> bool:
        """Join or start a cluster; ``True`` when this call started it (and must stop it)."""
        ray = self.ray
        if ray.is_initialized():
            return False
        address = self.suite.address or os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=self.suite.workers * self.suite.resources.cpus,
                     include_dashboard=False, log_to_driver=False)
        return True

    def _check_resources(self) -> None:
        res = self.suite.resources
        self.cluster = {k: float(v) for k, v in self.ray.cluster_resources().items()
                        if k in ("CPU", "GPU")}
        for key, want in (("CPU", res.cpus), ("GPU", res.gpus)):
            have = self.cluster.get(key, 0.0)
            if want > have:
                raise ConfigError(
                    f"{self.suite.source}: each run asks for {key.lower()}s: {want:g} but the "
                    f"Ray cluster has {have:g} {key}(s) in all; lower resources.{key.lower()}s "
                    "or add nodes with them (a task no node can hold would wait forever)"
                )

    def execute(self, tasks: Sequence[Task], report: Report) -> None:
        ray = self.ray
        started = self._connect()
        try:
            self._check_resources()
            res = self.suite.resources
            remote = ray.remote(_ray_task)
            options = {"num_cpus": res.cpus, "num_gpus": res.gpus,
                       "max_retries": self.suite.max_retries, "retry_exceptions": False}
            refs: dict[str, Any] = {}
            pending: dict[Any, Task] = {}
            for task in tasks:  # prepare tasks come first, so their refs exist for the runs
                ref = remote.options(**options, name=f"{task.kind}:{task.key}").remote(
                    absolute_paths(task), *(refs[k] for k in task.needs))
                refs[task.key] = ref
                pending[ref] = task
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    task = pending.pop(ref)
                    try:
                        result = ray.get(ref)
                    except ray.exceptions.RayError as exc:  # retries used up, or a dep failed
                        text = str(exc).strip().splitlines()
                        result = TaskResult(task.kind, task.key, 0.0, attempt=(
                            self.suite.max_retries + 1), error=f"{type(exc).__name__}: "
                            f"{text[0] if text else 'the Ray task failed'}")
                    report(result)
        finally:
            if started:
                ray.shutdown()

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "address": self.suite.address, "max_retries":
                self.suite.max_retries, "cluster_resources": self.cluster,
                "ray": self.ray.__version__}
