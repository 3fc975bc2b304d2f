"""Execute a suite's runs with :func:`pyro_clip.runner.run`, resumably, in 1 or N processes.

One process keeps the backbone and the cached features loaded across runs (the runner caches
backbones per process). With ``workers=N`` each of N processes runs with one torch thread:
on a 2-core machine two single-thread workers beat one two-thread process because the runs
are small and mostly Python-bound. Runs whose ``metrics.json`` exists are skipped; a failed
run writes ``error.txt`` in its folder and the suite carries on.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from pyro_clip.config import RunConfig
from pyro_clip.errors import ConfigError
from pyro_clip.progress import ProgressBar, progress_bar
from pyro_clip.suite import SuiteConfig, SuiteRun, expand


@dataclass
class SuiteOutcome:
    """What one :func:`run_suite` call did; ``seconds[out]`` = wall time of each executed run."""

    runs: list[SuiteRun]
    skipped: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    wall_seconds: float = 0.0


@contextmanager
def diagnostics_mode(mode: str) -> Iterator[None]:
    """Temporarily swap the runner's diagnostics hook: ``full`` | ``metrics`` | ``none``."""
    from pyro_clip import runner
    from pyro_clip.diagnostics.hooks import diagnose_run, metrics_only_hook

    saved = list(runner.RUN_HOOKS)
    if mode == "metrics":
        runner.RUN_HOOKS[:] = [metrics_only_hook if h is diagnose_run else h for h in saved]
    elif mode == "none":
        runner.RUN_HOOKS[:] = [h for h in saved if h is not diagnose_run]
    try:
        yield
    finally:
        runner.RUN_HOOKS[:] = saved


def execute_run(config: dict[str, Any], diagnostics: str) -> tuple[str, float, str | None]:
    """Run one configuration; returns ``(out, seconds, error text or None)``, never raises."""
    from pyro_clip.runner import run

    cfg = RunConfig.from_dict(config)
    started = time.perf_counter()
    try:
        with diagnostics_mode(diagnostics):
            run(cfg)
        error = None
    except Exception:  # one broken run must not stop a 30-minute suite; it is reported
        error = traceback.format_exc()
        Path(cfg.out).mkdir(parents=True, exist_ok=True)
        (Path(cfg.out) / "error.txt").write_text(error)
    return cfg.out, time.perf_counter() - started, error


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _record(outcome: SuiteOutcome, result: tuple[str, float, str | None],
            bar: ProgressBar) -> None:
    out, seconds, error = result
    outcome.seconds[out] = seconds
    if error is not None:
        outcome.failures[out] = error.strip().splitlines()[-1]
        bar.write(f"FAILED {out}: {outcome.failures[out]} (traceback in {out}/error.txt)")
    bar.update(1)


def run_suite(suite: SuiteConfig, workers: int = 1, progress: bool = True) -> SuiteOutcome:
    """Execute every pending run of ``suite``; see the module docstring."""
    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    runs = expand(suite)
    pending = [r for r in runs if not r.done]
    outcome = SuiteOutcome(runs, skipped=len(runs) - len(pending))
    started = time.perf_counter()
    with progress_bar(total=len(runs), initial=outcome.skipped, desc=suite.name, unit="run",
                      enabled=progress) as bar:
        if workers == 1 or len(pending) <= 1:
            for r in pending:
                bar.set_postfix_str(f"{r.method} {r.protocol} {r.shots}-shot seed {r.seed}")
                _record(outcome, execute_run(r.config.to_dict(), suite.diagnostics), bar)
        else:
            _run_parallel(suite, pending, workers, outcome, bar)
    outcome.wall_seconds = time.perf_counter() - started
    return outcome


def _run_parallel(suite: SuiteConfig, pending: list[SuiteRun], workers: int,
                  outcome: SuiteOutcome, bar: ProgressBar) -> None:
    """First run of each data set alone (fills the feature cache once), then the rest.

    The first run is one of a method without weights (zero-shot) where there is one: it
    costs little beyond the feature extraction that every later run reuses.
    """
    from pyro_clip.methods import get_method_class

    first: dict[str, SuiteRun] = {}
    for r in sorted(pending, key=lambda r: get_method_class(r.method).has_weights):
        first.setdefault(r.dataset, r)
    rest = [r for r in pending if r not in first.values()]
    ctx = get_context("spawn")  # fork after torch has started threads is unsafe
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                             initargs=(1,)) as pool:
        for r in first.values():
            _record(outcome, pool.submit(execute_run, r.config.to_dict(),
                                         suite.diagnostics).result(), bar)
        futures = {pool.submit(execute_run, r.config.to_dict(), suite.diagnostics)
                   for r in rest}
        while futures:
            finished, futures = wait(futures, return_when=FIRST_COMPLETED)
            for fut in finished:
                _record(outcome, fut.result(), bar)
