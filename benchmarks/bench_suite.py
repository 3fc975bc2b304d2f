"""Suite throughput: the local executor vs Ray, same worker count, same runs, in one process.

A subset of ``configs/bench/offline.yaml`` (5 cheap methods x shots {1, 4, 16} x seeds {1, 2}
x both protocols = 60 runs, conse backbone) runs once with the local process pool and once on
a local Ray cluster with as many CPUs as workers, each into a fresh temporary folder, after
the feature cache has been warmed (both only read features; each still loads the backbone
in its workers). Throughput ratio = local wall time / Ray wall time (target >= 0.9: Ray's
scheduling overhead under 10%). The Ray cluster's start-up is timed apart (a user with a
running cluster does not pay it). Also checked: every run's metrics.json (less timings) is
identical between the two executors. Writes ``benchmarks/results/suite_executors.json``.

Run: ``python -m benchmarks.bench_suite [--workers 2]``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import write_result

ROOT = Path(__file__).resolve().parents[1]
SUBSET = {"methods": ["zero-shot", "linear-probe", "tip-adapter", "clip-adapter", "coop"],
          "shots": [1, 4, 16], "seeds": [1, 2], "method_seeds": {}}
TIMING = ("fit_seconds", "total_seconds")


def _metrics(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text())
    return {k: v for k, v in data.items() if k not in TIMING}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--suite", type=Path, default=ROOT / "configs" / "bench" / "offline.yaml")
    args = p.parse_args(argv)

    try:
        import ray
    except ImportError:
        print("bench_suite: Ray is not installed (pip install 'pyro-clip[ray]'); skipped")
        return 0

    from pyro_clip.suite import expand, load_suite, run_suite
    from pyro_clip.suite.execute import build_tasks
    from pyro_clip.suite.tasks import PREPARE, execute_prepare

    tmp = Path(tempfile.mkdtemp(prefix="bench_suite_"))
    load: dict[str, Any] = {"before": os.getloadavg()}
    suites = {name: load_suite(args.suite, out=str(tmp / name), **SUBSET)
              for name in ("local", "ray")}
    # warm the feature cache first: the executor timed first must not pay the encoding
    # (a cold fashion-mnist-c entry took 345 s of the local executor's 512 s in a first try)
    t0 = time.perf_counter()
    for task in build_tasks(suites["local"], expand(suites["local"])):
        if task.kind == PREPARE:
            assert execute_prepare(task).error is None, task.key
    warm = time.perf_counter() - t0
    outcomes, walls = {}, {}
    t0 = time.perf_counter()
    outcomes["local"] = run_suite(suites["local"], workers=args.workers, executor="local",
                                  progress=False)
    walls["local"] = time.perf_counter() - t0
    load["after_local"] = os.getloadavg()

    t0 = time.perf_counter()
    ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
    ray_init = time.perf_counter() - t0
    try:
        t0 = time.perf_counter()
        outcomes["ray"] = run_suite(suites["ray"], workers=args.workers, executor="ray",
                                    progress=False)
        walls["ray"] = time.perf_counter() - t0
    finally:
        ray.shutdown()
    load["after_ray"] = os.getloadavg()

    runs = {name: expand(s) for name, s in suites.items()}
    identical = sum(_metrics(a.out / "metrics.json") == _metrics(b.out / "metrics.json")
                    for a, b in zip(runs["local"], runs["ray"], strict=True)
                    if a.done and b.done)
    n = len(runs["local"])
    result = {
        "suite": str(args.suite.relative_to(ROOT)), "subset": SUBSET,
        "protocols": suites["local"].protocols, "backbone": suites["local"].backbone,
        "runs": n, "workers": args.workers,
        "local_wall_seconds": walls["local"], "ray_wall_seconds": walls["ray"],
        "ray_cluster_start_seconds": ray_init, "cache_warm_up_seconds": warm,
        "local_runs_per_minute": 60 * n / walls["local"],
        "ray_runs_per_minute": 60 * n / walls["ray"],
        "ray_vs_local_throughput_ratio": walls["local"] / walls["ray"],
        "target_ray_vs_local_throughput": 0.9,
        "ray_vs_local_with_cluster_start_ratio": walls["local"] / (walls["ray"] + ray_init),
        "identical_metrics_runs": identical,
        "failures": {k: len(o.failures) for k, o in outcomes.items()},
        "load_average_1_5_15min": load,
        "note": "2 shared CPU cores; other processes ran at the same time (load above)",
    }
    write_result("suite_executors", result)
    print(json.dumps({k: v for k, v in result.items() if "seconds" in k or "ratio" in k},
                     indent=1))
    return 0 if identical == n else 1


if __name__ == "__main__":
    raise SystemExit(main())
