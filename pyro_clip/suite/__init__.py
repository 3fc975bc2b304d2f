"""Benchmark suites: one YAML file -> every (data set, protocol, method, shots, seed) run.

- :mod:`~pyro_clip.suite.config`: the suite file's schema and its expansion into runs;
- :mod:`~pyro_clip.suite.check`: the dry run (validation, missing data), loading no weights;
- :mod:`~pyro_clip.suite.tasks`: the unit of work (prepare features / one run, atomically);
- :mod:`~pyro_clip.suite.executors`: ``local`` and ``ray`` behind one interface;
- :mod:`~pyro_clip.suite.execute`: resume, task list, progress, outcome;
- :mod:`~pyro_clip.suite.results`: mean ± std tables over seeds.
"""

from __future__ import annotations

import importlib
from typing import Any

#: public name -> submodule; imported on first use (PEP 562) so that ``pyro-clip --help``
#: and the executor registry do not pay for torch and the data registry
_EXPORTS = {
    "Plan": "check", "dry_run": "check",
    "Resources": "config", "SuiteConfig": "config", "SuiteRun": "config", "expand": "config",
    "load_suite": "config", "parse_suite": "config",
    "SuiteOutcome": "execute", "run_suite": "execute",
    "aggregate": "results", "headline": "results", "markdown": "results",
    "mean_std": "results", "write_results": "results",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
