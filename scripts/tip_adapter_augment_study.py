"""Tip-Adapter / Tip-Adapter-F accuracy by training-time augmentation (docs/baselines.md).

Runs ``pyro-clip fit``'s runner for augment in {none, crop-flip, flip} at 4 and 16 shots, seeds
1-3, on the embedded data with the offline ConSE backbone, and writes
``benchmarks/results/tip_adapter_augment.json``. About 15 min on 2 loaded cores (encoding the
10 cached views of each split dominates). Usage: ``python scripts/tip_adapter_augment_study.py``.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import write_result
from pyro_clip.pipeline.config import RunConfig
from pyro_clip.pipeline.run import run


def main() -> None:
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for shots in (4, 16):
            for seed in (1, 2, 3):
                for method in ("tip-adapter", "tip-adapter-f"):
                    for augment in ("none", "crop-flip", "flip"):
                        cfg = RunConfig(method=method, protocol="few-shot", shots=shots,
                                        seed=seed, eval_datasets=[], options={"augment": augment},
                                        out=str(Path(tmp) / f"{method}_{augment}_{shots}_{seed}"),
                                        progress=False)
                        t0 = time.time()
                        test = run(cfg).metrics["test"]
                        rows.append({"method": method, "augment": augment, "shots": shots,
                                     "seed": seed, "acc": test["accuracy"], "nll": test["nll"],
                                     "ece": test["ece"], "sec": time.time() - t0})
                        print(rows[-1], flush=True)
    write_result("tip_adapter_augment", {
        "what": "Tip-Adapter / Tip-Adapter-F test accuracy on the embedded data (ConSE) by "
                "augment, few-shot protocol, seeds 1-3, 1 torch thread",
        "rows": rows})


if __name__ == "__main__":
    main()
