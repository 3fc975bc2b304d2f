"""Execute a suite: expand, skip finished runs, build the task list, hand it to an executor.

Runs whose ``metrics.json`` exists are skipped (a killed suite resumes). The task list holds
one ``prepare`` task per data set the pending runs read (it encodes every split they need,
once) followed by the run tasks, each naming the prepare tasks it needs; executors start a
run only after those finished. The driver shows one progress bar over the runs and appends one
line per finished task to ``<out>/suite.log``; each run writes its own ``run.log``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pyro_clip.errors import ConfigError
from pyro_clip.suite.config import SuiteConfig, SuiteRun, expand
from pyro_clip.suite.executors import get_executor_class
from pyro_clip.suite.tasks import PREPARE, RUN, Task, TaskResult
from pyro_clip.utils.progress import ProgressBar, progress_bar


@dataclass
class SuiteOutcome:
    """What one :func:`run_suite` call did; ``seconds[out]`` = wall time of each executed run."""

    runs: list[SuiteRun]
    skipped: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    #: attempts of each executed run (> 1: a worker died and the run was retried)
    attempts: dict[str, int] = field(default_factory=dict)
    prepare_seconds: dict[str, float] = field(default_factory=dict)
    prepare_failures: dict[str, str] = field(default_factory=dict)
    executor: dict[str, Any] = field(default_factory=dict)
    wall_seconds: float = 0.0

    def info(self) -> dict[str, Any]:
        """The JSON-able part written next to the results tables."""
        return {"failures": self.failures, "run_seconds": self.seconds,
                "attempts": self.attempts, "prepare_seconds": self.prepare_seconds,
                "prepare_failures": self.prepare_failures, "executor": self.executor,
                "wall_seconds": self.wall_seconds, "skipped_runs": self.skipped}


def build_tasks(suite: SuiteConfig, pending: list[SuiteRun]) -> list[Task]:
    """One prepare task per training data set of ``pending``, then the run tasks.

    A prepare task holds the configs of every pending run on its data set and encodes the
    union of the images those runs read (:func:`pyro_clip.pipeline.run.select_images`: few-shot
    sample, validation shots, test split, evaluation sets), never a whole training split.
    """
    threads = suite.resources.cpus
    prepares: dict[str, list[dict[str, Any]]] = {}
    runs = []
    for r in pending:
        key = f"features:{r.dataset}"
        prepares.setdefault(key, []).append(r.config.to_dict())
        runs.append(Task(RUN, str(r.out), r.config.to_dict(), suite.diagnostics, threads,
                         needs=(key,)))
    first = [Task(PREPARE, key, configs[0], suite.diagnostics, threads,
                  run_configs=tuple(configs))
             for key, configs in prepares.items()]
    return first + runs


def run_suite(suite: SuiteConfig, workers: int | None = None, progress: bool = True,
              executor: str | None = None, address: str | None = None) -> SuiteOutcome:
    """Execute every pending run of ``suite``; arguments override the suite file's keys."""
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    overrides = {k: v for k, v in (("workers", workers), ("executor", executor),
                                   ("address", address)) if v is not None}
    suite = replace(suite, **overrides)
    runner = get_executor_class(suite.executor)(suite)
    runs = expand(suite)
    pending = [r for r in runs if not r.done]
    outcome = SuiteOutcome(runs, skipped=len(runs) - len(pending))
    started = time.perf_counter()
    log_path = Path(suite.out) / "suite.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with progress_bar(total=len(runs), initial=outcome.skipped, desc=suite.name, unit="run",
                      enabled=progress) as bar, open(log_path, "a", buffering=1) as log:
        log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} suite {suite.name}: {len(pending)} "
                  f"run(s) to do, {outcome.skipped} done before, executor {suite.executor}\n")

        def report(result: TaskResult) -> None:
            _record(outcome, result, bar, log)

        if pending:
            runner.execute(build_tasks(suite, pending), report)
    outcome.executor = runner.describe()
    outcome.wall_seconds = time.perf_counter() - started
    return outcome


def _record(outcome: SuiteOutcome, result: TaskResult, bar: ProgressBar, log: Any) -> None:
    where = f"{result.host} pid {result.pid}"
    if result.kind == PREPARE:
        outcome.prepare_seconds[result.key] = result.seconds
        if result.error is not None:
            outcome.prepare_failures[result.key] = result.summary
        line = f"{result.key}: {'FAILED ' + result.summary if result.error else 'ready'}"
    else:
        outcome.seconds[result.key] = result.seconds
        outcome.attempts[result.key] = result.attempt
        if result.error is not None:
            outcome.failures[result.key] = result.summary
            bar.write(f"FAILED {result.key}: {result.summary} "
                      f"(traceback in {result.key}/error.txt)")
        line = f"{result.key}: {'FAILED ' + result.summary if result.error else 'done'}"
        bar.update(1)
    bar.set_postfix_str(line[-60:])
    log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line} in {result.seconds:.1f} s on "
              f"{where} (attempt {result.attempt})\n")
