"""``pyro-clip demo``: every demo method on the embedded Fashion-MNIST subset, fully offline.

Runs the few-shot protocol (with the shifted copy as an extra evaluation set) into
``out/<method>`` and the base-to-new protocol into ``out/<method>_base-to-new`` for each
method, then prints one table and writes the report.

The runs are independent, so they go through the suite's local executor
(:class:`~pyro_clip.suite.executors.local.LocalExecutor`): one task fills the feature cache,
then ``workers`` processes take the runs, few-shot runs first (they fit and evaluate more data
than the base-to-new runs). Every run computes with one torch thread whatever ``workers`` is,
so its numbers do not depend on how many runs share the machine.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from pyro_clip.errors import ConfigError, PyroClipError
from pyro_clip.methods import get_method_class, known_methods
from pyro_clip.pipeline.config import PROTOCOLS, RunConfig
from pyro_clip.reporting.html import write_report
from pyro_clip.reporting.tables import markdown_table, run_summary
from pyro_clip.suite.config import SuiteConfig
from pyro_clip.suite.executors.local import LocalExecutor
from pyro_clip.suite.tasks import PREPARE, RUN, Task, TaskResult

#: torch threads of every demo run (see the module docstring)
RUN_THREADS = 1
FEATURES_KEY = "features:demo"


#: one deliberately mis-specified run next to its calibrated default, few-shot only:
#: (method, options, folder name). A prior variance far above the one chosen on validation
#: lets the filter's mean run away from the zero-shot prior and its predictive become
#: over-confident, so its held-out PPCs fail where the default's pass; the report's PPC
#: section shows the two side by side.
CONTRAST_RUNS = (("kalman", {"prior_var": 1e4}, "kalman_prior-var-1e4"),)


def demo_methods() -> list[str]:
    return [m for m in known_methods() if get_method_class(m).demo_options is not None]


def default_workers() -> int:
    """One worker process per core, at most two (a third gains little: the longest run sets
    the wall time once the short ones are shared out)."""
    return max(1, min(2, os.cpu_count() or 1))


def run_dir(out: Path, method: str, protocol: str) -> Path:
    """``out/<method>`` for the few-shot run, ``out/<method>_<protocol>`` otherwise."""
    return out / (method if protocol == "few-shot" else f"{method}_{protocol}")


def demo_configs(out: Path, methods: Sequence[str], shots: int, seed: int,
                 cache_dir: str | None, backbone: str, progress: bool) -> list[RunConfig]:
    """One :class:`RunConfig` per method and protocol, in the report's order, then the
    :data:`CONTRAST_RUNS` of the methods asked for."""
    configs = [
        RunConfig(method=method, backbone=backbone, protocol=protocol, shots=shots, seed=seed,
                  options=dict(get_method_class(method).demo_options or {}),
                  cache_dir=cache_dir, out=str(run_dir(out, method, protocol)),
                  progress=progress)
        for method in methods for protocol in PROTOCOLS
    ]
    configs += [
        RunConfig(method=method, backbone=backbone, protocol=PROTOCOLS[0], shots=shots,
                  seed=seed, options={**(get_method_class(method).demo_options or {}), **opts},
                  cache_dir=cache_dir, out=str(out / name), progress=progress)
        for method, opts, name in CONTRAST_RUNS if method in methods
    ]
    return configs


def demo_tasks(configs: Sequence[RunConfig], prepare_threads: int) -> list[Task]:
    """The prepare task (every image the runs read, encoded once), then the run tasks with
    the few-shot runs first; each run task keeps the full diagnostics (plots, ``idata.nc``)."""
    dicts = [c.to_dict() for c in configs]
    prepare = Task(PREPARE, FEATURES_KEY, dicts[0], threads=prepare_threads,
                   run_configs=tuple(dicts))
    ordered = sorted(dicts, key=lambda d: PROTOCOLS.index(d["protocol"]))  # stable
    runs = [Task(RUN, d["out"], d, "full", RUN_THREADS, needs=(FEATURES_KEY,)) for d in ordered]
    return [prepare, *runs]


def run_demo(
    out: Path,
    methods: Sequence[str] | None = None,
    shots: int = 16,
    seed: int = 1,
    cache_dir: str | None = None,
    backbone: str = "conse",
    workers: int | None = None,
) -> list[Path]:
    """Fit and evaluate ``methods`` (default: all with ``demo_options``) in ``workers``
    processes (default :func:`default_workers`); returns the run folders."""
    methods = list(methods) if methods else demo_methods()
    unknown = [m for m in methods if m not in known_methods()]
    if unknown:
        raise ConfigError(f"unknown method(s) {unknown}; known: {', '.join(known_methods())}")
    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    configs = demo_configs(out, methods, shots, seed, cache_dir, backbone,
                           progress=workers == 1)
    failures: dict[str, str] = {}

    def report(result: TaskResult) -> None:
        if result.kind == PREPARE:  # on failure each run encodes (and reports) what it needs
            state = f"FAILED ({result.summary})" if result.error else "ready"
            print(f"== features {state} in {result.seconds:.1f} s", flush=True)
        elif result.error is not None:
            failures[result.key] = result.summary
            print(f"FAILED {result.key}: {result.summary}", file=sys.stderr, flush=True)
        else:
            print(f"== {Path(result.key).name}: done in {result.seconds:.1f} s", flush=True)

    executor = LocalExecutor(SuiteConfig(name="demo", workers=workers, max_retries=0,
                                         out=str(out)))
    # the prepare task is alone while it runs: it may use every worker's core
    executor.execute(demo_tasks(configs, prepare_threads=workers), report)
    if failures:
        where = ", ".join(f"{Path(k).name} ({v})" for k, v in failures.items())
        raise PyroClipError(f"demo run(s) failed: {where}; the tracebacks are in each run "
                            "folder's error.txt (and run.log); fix and re-run the demo")
    runs = [Path(c.out) for c in configs if c.out is not None]
    print(markdown_table([run_summary(r) for r in runs]))
    report_path = write_report(runs, out / "report")
    print(f"report: {report_path}")
    return runs
