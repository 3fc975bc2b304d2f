"""The one interface every executor implements: run tasks, report each result as it finishes."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import ClassVar

from pyro_clip.suite.config import SuiteConfig
from pyro_clip.suite.tasks import Task, TaskResult

Report = Callable[[TaskResult], None]


class Executor(ABC):
    """Executes a suite's :class:`~pyro_clip.suite.tasks.Task` list.

    Contract: every task is executed (by :func:`~pyro_clip.suite.tasks.execute_task`, in any
    process or machine that sees the same file system) and ``report`` is called once per task,
    in the driver process; a ``run`` task starts only after the ``prepare`` tasks named in its
    ``needs`` have finished. A task whose worker dies may be re-run up to
    ``suite.max_retries`` times; after that it is reported with an ``error``.
    """

    #: the name used in suite files and ``--executor``
    name: ClassVar[str]

    def __init__(self, suite: SuiteConfig) -> None:
        self.suite = suite

    @abstractmethod
    def execute(self, tasks: Sequence[Task], report: Report) -> None:
        """Run ``tasks`` (see the class docstring); returns when all have been reported."""

    def describe(self) -> dict[str, object]:
        """What the results JSON records about the executor."""
        return {"executor": self.name, "workers": self.suite.workers,
                "resources": {"cpus": self.suite.resources.cpus,
                              "gpus": self.suite.resources.gpus}}
