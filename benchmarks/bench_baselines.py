"""Fit time and accuracy of every baseline, side by side, on the same cached ConSE features.

Usage: ``python benchmarks/bench_baselines.py [--out bench_baselines.json] [--threads 2]``.
Runs each method once per protocol with its demo options (what ``pyro-clip demo`` runs) and
reports fit seconds, the ratio to the linear probe's fit time, and test accuracy; writes JSON.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from benchmarks.common import write_result
from pyro_clip.methods import get_method_class
from pyro_clip.pipeline.config import RunConfig
from pyro_clip.pipeline.run import run

METHODS = ["zero-shot", "linear-probe", "clip-adapter", "tip-adapter", "tip-adapter-f", "laplace"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for protocol in ("few-shot", "base-to-new"):
            for method in METHODS:
                cfg = RunConfig(method=method, protocol=protocol, eval_datasets=[],
                                options=dict(get_method_class(method).demo_options or {}),
                                out=str(Path(tmp) / f"{method}_{protocol}"), progress=False)
                m = run(cfg).metrics
                acc = m["test"]["accuracy"] if protocol == "few-shot" else m["base_to_new"]["h"]
                rows.append({"method": method, "protocol": protocol,
                             "fit_seconds": m["fit_seconds"], "accuracy_or_h": acc})
    for protocol in ("few-shot", "base-to-new"):
        ref = next(r["fit_seconds"] for r in rows
                   if r["method"] == "linear-probe" and r["protocol"] == protocol)
        for r in rows:
            if r["protocol"] == protocol:
                r["fit_time_vs_linear_probe"] = r["fit_seconds"] / ref
    print(f"{'method':15s} {'protocol':12s} {'fit s':>7s} {'x probe':>8s} {'acc/H':>6s}")
    for r in rows:
        print(f"{r['method']:15s} {r['protocol']:12s} {r['fit_seconds']:7.2f} "
              f"{r['fit_time_vs_linear_probe']:8.2f} {100 * r['accuracy_or_h']:6.1f}")
    write_result("baselines", {"threads": args.threads, "rows": rows})


if __name__ == "__main__":
    main()
