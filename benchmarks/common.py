"""Helpers shared by the benchmark scripts: timing and writing results JSON."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from pyro_clip.utils.io import atomic_write, write_json

RESULTS_DIR = Path(__file__).parent / "results"


def best_of(fn: Callable[[], Any], repeats: int = 3) -> float:
    """Minimum wall time of ``repeats`` calls (the least noisy estimate on a shared machine)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "processor": platform.processor() or platform.machine(),
    }


def print_result(payload: dict[str, Any]) -> None:
    """One aligned ``key value`` line per result (floats to 3 decimals)."""
    width = max(map(len, payload), default=0) + 2
    for k, v in payload.items():
        print(f"{k:{width}s}{v:.3f}" if isinstance(v, float) else f"{k:{width}s}{v}")


def write_result(name: str, payload: dict[str, Any], out_dir: Path | None = None) -> Path:
    path = (out_dir or RESULTS_DIR) / f"{name}.json"
    write_json(path, {"benchmark": name, "machine": machine(), **payload})
    print(f"wrote {path}")
    return path


def write_study(name: str, args: Any, splits: list[dict[str, Any]],
                means: dict[str, Any], markdown: Callable[[dict[str, Any]], str]) -> None:
    """A per-split study's ``<name>.json`` (its arguments, splits, means and the machine) and
    the ``<name>.md`` that ``markdown`` renders from the same record."""
    res = {"args": vars(args), "splits": splits, "means": means, "machine": machine()}
    write_result(name, res)
    text = markdown(res)
    atomic_write(RESULTS_DIR / f"{name}.md", lambda path: path.write_text(text))

