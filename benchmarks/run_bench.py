"""``make bench``: the speed benchmarks, then the offline suite, then ``RESULTS.md``.

1. runs the speed benchmarks in ``SPEED_SCRIPTS`` (each writes ``benchmarks/results/<name>.json``;
   the longer studies run on their own, see ``SPEED_SCRIPTS``);
2. runs the suite ``configs/bench/offline.yaml`` (resumable; ``--workers``);
3. writes ``benchmarks/results/calibration_targets.md`` (:mod:`benchmarks.calibration_targets`:
   the Bayesian heads' calibration targets against linear-probe, and their PPC p-values);
4. writes ``benchmarks/results/RESULTS.md``: the suite's mean ± std tables and every speed
   ratio found in the benchmark JSON files (keys containing ``ratio`` or ``speedup``, next to
   their ``target_*`` value), and ``benchmarks/results/bench_run.json`` with the timings.

Run: ``python -m benchmarks.run_bench [--workers 2] [--suite FILE] [--skip-speed]``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import calibration_targets
from benchmarks.common import RESULTS_DIR, machine, write_result

ROOT = Path(__file__).resolve().parents[1]
SPEED_WORDS = ("ratio", "speedup")
BACKBONE_NOTE = (
    "Backbone `conse`: an offline ConSE dual encoder (EfficientNet-Lite0 ImageNet "
    "probabilities x all-MiniLM-L6-v2 class-prompt embeddings). It is a genuine but **weak** "
    "pre-trained prior, **not CLIP**: its zero-shot accuracy on the embedded Fashion-MNIST "
    "subset is about 34% (chance 10%). Compare methods with each other here; for numbers "
    "comparable with the papers run `configs/paper/*.yaml` with real CLIP (docs/benchmarks.md)."
)


#: the speed benchmarks ``make bench`` runs, with their arguments (a few minutes in all). The
#: other ``bench_*.py`` are studies run on their own: ``bench_prompt_sweep`` (the base-to-new
#: lambda x alpha sweep, about an hour), ``bench_kalman`` without ``--skip-accuracy`` (the
#: structures' accuracy over seeds), ``bench_suite`` (local vs Ray executors; starts a Ray
#: cluster), ``bench_data_path`` (writes a 20,000-JPEG folder), ``bench_prediction`` (1,000-class
#: prediction) and ``bench_gpu`` (needs a CUDA GPU); each writes its own results file.
SPEED_SCRIPTS: dict[str, list[str]] = {
    "bench_baselines": [],
    "bench_features": [],
    "bench_kalman": ["--skip-accuracy", "--name", "kalman_costs"],
    "bench_ove_pg": [],
    "bench_active": [],  # not a speed ratio: its labelling curves, section active.md
}

#: scripts that need longer than ``--script-timeout`` (seconds; bench_active: 3 seeds x 3
#: strategies x 16 labelling rounds)
SCRIPT_TIMEOUTS: dict[str, float] = {"bench_active": 3600.0}

#: markdown sections benchmark scripts write next to their JSON; RESULTS.md includes them
SECTION_FILES = ("calibration_targets.md", "active.md")


def result_sections(results_dir: Path = RESULTS_DIR) -> str:
    """The :data:`SECTION_FILES` found in ``results_dir``, concatenated."""
    parts = [(results_dir / name).read_text() for name in SECTION_FILES
             if (results_dir / name).exists()]
    return "\n".join(parts)


def speed_scripts() -> list[tuple[Path, list[str]]]:
    return [(ROOT / "benchmarks" / f"{name}.py", args) for name, args in SPEED_SCRIPTS.items()]


def run_speed_benchmarks(timeout: float) -> list[dict[str, Any]]:
    """Run each script as ``python -m benchmarks.<name>``; a failure is recorded, not raised."""
    done = []
    for script, args in speed_scripts():
        t0 = time.perf_counter()
        print(f"== {script.name} {' '.join(args)}", flush=True)
        try:
            proc = subprocess.run([sys.executable, "-m", f"benchmarks.{script.stem}", *args],
                                  cwd=ROOT, check=False,
                                  timeout=max(timeout, SCRIPT_TIMEOUTS.get(script.stem, 0.0)))
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
        done.append({"script": script.name, "returncode": rc,
                     "seconds": time.perf_counter() - t0})
    return done


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        elif isinstance(v, list) and v and all(isinstance(i, dict) for i in v):
            for i, item in enumerate(v):
                out.update(_flat(item, f"{prefix}{k}.{i}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def speed_rows(results_dir: Path = RESULTS_DIR) -> list[dict[str, Any]]:
    """Every numeric ``*ratio*`` / ``*speedup*`` value of the benchmark JSON files.

    The target of key ``k`` is the ``target_<t>`` value whose ``t`` is a prefix of ``k``'s
    last component (``pipeline_vs_raw_ratio`` <- ``target_pipeline_vs_raw``).
    """
    rows = []
    for path in sorted(results_dir.glob("*.json")):
        if path.stem == "bench_run":
            continue
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if not isinstance(data, dict):
            continue
        if path.stem.startswith("suite_") and "benchmark" not in data:
            continue  # a suite's results table, not a speed benchmark (suite_executors is)
        flat = _flat({k: v for k, v in data.items() if k != "machine"})
        targets = {k.rsplit(".", 1)[-1][len("target_"):]: v for k, v in flat.items()
                   if k.rsplit(".", 1)[-1].startswith("target_")}
        for key, value in flat.items():
            leaf = key.rsplit(".", 1)[-1]
            # whole words only: "p_calibration" holds "ratio" but is not a speed ratio
            if leaf.startswith("target_") or not set(leaf.split("_")) & set(SPEED_WORDS):
                continue
            if not isinstance(value, int | float) or isinstance(value, bool):
                continue
            target = next((t for name, t in sorted(targets.items(), key=lambda x: -len(x[0]))
                           if leaf.startswith(name)), None)
            if target is None and "." in key:  # a sibling "target" in the same result block
                target = flat.get(key.rsplit(".", 1)[0] + ".target")
            rows.append({"benchmark": data.get("benchmark", path.stem), "measure": key,
                         "value": float(value), "target": target})
    return rows


def _meets(value: float, target: Any) -> bool | None:
    """``target`` is a number (value must reach it) or a string ``"<= x"`` / ``">= x"``."""
    if isinstance(target, int | float) and not isinstance(target, bool):
        return value >= target
    if isinstance(target, str) and target[:2] in ("<=", ">="):
        bound = float(target[2:].strip().rstrip("x"))
        return value <= bound if target.startswith("<=") else value >= bound
    return None


def speed_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "No speed benchmark results found in benchmarks/results/.\n"
    lines = ["| benchmark | measure | value | target | met |", "|---|---|---:|---:|:-:|"]
    for r in rows:
        t = r["target"]
        met = "" if _meets(r["value"], t) is None else ("yes" if _meets(r["value"], t) else "no")
        lines.append(f"| {r['benchmark']} | {r['measure']} | {r['value']:.3g} | "
                     f"{'' if t is None else t} | {met} |")
    return "\n".join(lines) + "\n"


def run_offline_suite(config: Path, workers: int) -> tuple[Path, dict[str, Any]]:
    from pyro_clip.suite import dry_run, load_suite, run_suite, write_results

    suite = load_suite(config)
    print(dry_run(suite).summary(), flush=True)
    outcome = run_suite(suite, workers=workers)
    info = {**outcome.info(), "workers": workers}
    _, md_path = write_results(suite, outcome.runs, info)
    return md_path, info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--suite", type=Path, default=ROOT / "configs" / "bench" / "offline.yaml")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--skip-speed", action="store_true", help="only the suite")
    p.add_argument("--script-timeout", type=float, default=600.0)
    p.add_argument("--out-dir", type=Path, default=RESULTS_DIR,
                   help="where RESULTS.md and bench_run.json go (speed JSONs are read here)")
    args = p.parse_args(argv)

    started = time.perf_counter()
    scripts = [] if args.skip_speed else run_speed_benchmarks(args.script_timeout)
    speed_s = time.perf_counter() - started
    md_path, info = run_offline_suite(args.suite, args.workers)
    calibration_targets.write(args.suite, out_dir=args.out_dir)
    total = time.perf_counter() - started

    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    m = machine()
    text = "\n".join([
        "# pyro-clip benchmark results", "",
        f"Generated by `make bench` on {stamp}; Python {m['python']}, torch {m['torch']}, "
        f"{args.workers} worker process(es). Speed benchmarks {speed_s:.0f} s, suite "
        f"{info['wall_seconds']:.0f} s ({len(info['run_seconds'])} runs executed, "
        f"{info['skipped_runs']} reused), total {total:.0f} s.", "",
        BACKBONE_NOTE, "",
        md_path.read_text(),
        "## Speed ratios (each benchmark's latest results file; "
        + ("--skip-speed: none re-measured in this run)" if args.skip_speed else
           "re-measured in this run: " + ", ".join(SPEED_SCRIPTS)
           + "; the other studies as of their own last run)"), "",
        speed_table(speed_rows(args.out_dir)),
        result_sections(args.out_dir),
    ])
    out = args.out_dir / "RESULTS.md"
    out.write_text(text)
    write_result("bench_run", {"scripts": scripts, "speed_seconds": speed_s,
                               "suite_seconds": info["wall_seconds"], "total_seconds": total,
                               "failed_runs": sorted(info["failures"])}, args.out_dir)
    print(f"wrote {out}")
    failed = [s for s in scripts if s["returncode"] != 0]
    return 1 if failed or info["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
