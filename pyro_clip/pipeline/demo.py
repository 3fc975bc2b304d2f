"""``pyro-clip demo``: every demo method on the embedded Fashion-MNIST subset, fully offline.

Runs the few-shot protocol (with the shifted copy as an extra evaluation set) into
``out/<method>`` and the base-to-new protocol into ``out/<method>_base-to-new`` for each
method, then prints one table and writes the report.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pyro_clip.errors import ConfigError
from pyro_clip.methods import get_method_class, known_methods
from pyro_clip.pipeline.config import RunConfig
from pyro_clip.pipeline.run import run
from pyro_clip.reporting.html import write_report
from pyro_clip.reporting.tables import markdown_table, run_summary


def demo_methods() -> list[str]:
    return [m for m in known_methods() if get_method_class(m).demo_options is not None]


def run_demo(
    out: Path,
    methods: Sequence[str] | None = None,
    shots: int = 16,
    seed: int = 1,
    cache_dir: str | None = None,
    backbone: str = "conse",
) -> list[Path]:
    """Fit and evaluate ``methods`` (default: all with ``demo_options``); returns run folders."""
    methods = list(methods) if methods else demo_methods()
    unknown = [m for m in methods if m not in known_methods()]
    if unknown:
        raise ConfigError(f"unknown method(s) {unknown}; known: {', '.join(known_methods())}")
    runs: list[Path] = []
    for method in methods:
        options = dict(get_method_class(method).demo_options or {})
        for protocol in ("few-shot", "base-to-new"):
            # the few-shot run is the method's own folder (runs/demo/kalman)
            run_dir = out / (method if protocol == "few-shot" else f"{method}_{protocol}")
            cfg = RunConfig(
                method=method, backbone=backbone, protocol=protocol, shots=shots, seed=seed,
                options=options, cache_dir=cache_dir, out=str(run_dir),
            )
            print(f"== {method} ({protocol})", flush=True)
            run(cfg)
            runs.append(run_dir)
    rows = [run_summary(r) for r in runs]
    print(markdown_table(rows))
    report = write_report(runs, out / "report")
    print(f"report: {report}")
    return runs
