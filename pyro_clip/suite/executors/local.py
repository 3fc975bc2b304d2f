"""Local executor: the driver process (``workers: 1``) or a pool of N spawned processes.

One process keeps the backbone loaded across runs (the runner caches it per process). Each
task sets ``resources.cpus`` torch threads: on 2 cores two single-thread workers beat one
two-thread process, since the runs are small and mostly Python-bound. A pool whose worker
process dies (``BrokenProcessPool`` fails every task in flight) is rebuilt and the tasks in
flight are re-run, each at most ``max_retries`` times, like Ray's task retries.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context

from pyro_clip.suite.executors.base import Executor, Report
from pyro_clip.suite.tasks import Task, TaskResult, execute_task


class LocalExecutor(Executor):
    """See the module docstring."""

    name = "local"

    def execute(self, tasks: Sequence[Task], report: Report) -> None:
        if self.suite.workers == 1 or len(tasks) <= 1:
            for task in tasks:  # prepare tasks come first in ``tasks``
                report(execute_task(task))
            return
        self._pool(list(tasks), report)

    def _pool(self, waiting: list[Task], report: Report) -> None:
        finished: set[str] = set()
        attempts: dict[str, int] = {}
        ctx = get_context("spawn")  # fork after torch has started threads is unsafe
        while waiting:
            with ProcessPoolExecutor(self.suite.workers, mp_context=ctx) as pool:
                futures: dict[Future, Task] = {}

                def submit_ready(pool: ProcessPoolExecutor = pool,
                                 futures: dict[Future, Task] = futures) -> None:
                    for task in [t for t in waiting if set(t.needs) <= finished]:
                        waiting.remove(task)
                        futures[pool.submit(execute_task, task, True)] = task

                submit_ready()
                broken = False
                while futures:
                    done, _ = wait(futures, return_when=FIRST_COMPLETED)
                    for fut in done:
                        task = futures.pop(fut)
                        try:
                            result = fut.result()
                        except BrokenProcessPool:
                            broken = True
                            attempts[task.key] = attempts.get(task.key, 1) + 1
                            if attempts[task.key] <= self.suite.max_retries + 1:
                                waiting.insert(0, task)
                                continue
                            result = TaskResult(task.kind, task.key, 0.0, attempt=attempts[
                                task.key] - 1, error="BrokenProcessPool: the worker process "
                                "died (killed, or out of memory) on every attempt")
                        finished.add(task.key)
                        report(result)
                    if not broken:
                        submit_ready()
            if waiting and not broken:
                raise RuntimeError(f"tasks {[t.key for t in waiting]} need prepare tasks that "
                                   "are not in the suite (a bug in the task list)")
