"""Calibration of the Bayesian heads' defaults against linear-probe on the demo data.

Fits each method with its default options on the embedded Fashion-MNIST few-shot splits (the
suite's splits, features from the shared cache) and scores the test set (accuracy, ECE, NLL)
and the shifted set (OOD AUROC of the max-softmax score), per shot count and seed. Selection
inside ``fit`` sees train and validation only. Writes
``benchmarks/results/predictive_calibration.json``.

Run: ``python -m benchmarks.bench_predictive --methods kalman laplace linear-probe
--shots 4 8 16 --seeds 1 2 3``.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from benchmarks.common import machine, write_result
from pyro_clip.diagnostics.metrics import classification_metrics
from pyro_clip.diagnostics.ood import auroc
from pyro_clip.methods import MethodContext, create_method
from pyro_clip.pipeline import run as runner
from pyro_clip.pipeline.config import RunConfig
from pyro_clip.runtime import Runtime

SHIFTED = "fashion-mnist-c"


def feature_sets(shots: int, seed: int) -> tuple[RunConfig, Any, dict[str, Any]]:
    """The run's train/val/test/shifted feature sets, exactly as ``pyro-clip fit`` builds them."""
    cfg = RunConfig(method="kalman", shots=shots, seed=seed, progress=False,
                    eval_datasets=[SHIFTED]).validate().resolved()
    images = runner.select_images(cfg)
    backbone = runner.get_backbone(cfg.backbone)
    parts = {"train": images.train, "val": images.val, "test": images.test,
             "shifted": images.extra[SHIFTED]}
    return cfg, backbone, {k: runner.encode_images(cfg, backbone, v) for k, v in parts.items()}


def score(method: str, shots: int, seed: int, options: dict[str, Any]) -> dict[str, Any]:
    cfg, backbone, fs = feature_sets(shots, seed)
    m = create_method(method, **options)
    m.setup(MethodContext(backbone, cfg.templates, seed, None, False, Runtime()))
    t0 = time.perf_counter()
    m.fit(fs["train"], fs["val"])
    fit_s = time.perf_counter() - t0
    with torch.no_grad():
        test = m.predict(fs["test"].features[m.feature_kind], fs["test"].classnames)
        shifted = m.predict(fs["shifted"].features[m.feature_kind], fs["shifted"].classnames)
    met = classification_metrics(test.probs, fs["test"].labels)
    msp_id, msp_ood = -test.probs.double().max(-1).values, -shifted.probs.double().max(-1).values
    chosen = {k: v for k, v in m.selected.items()
              if k in ("prior_var", "temperature", "prior_precision", "lam")}
    return {"method": method, "shots": shots, "seed": seed, "accuracy": met["accuracy"],
            "ece": met["ece"], "nll": met["nll"], "ood_auroc_msp": auroc(msp_id, msp_ood),
            "fit_seconds": fit_s, "selected": chosen}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", nargs="+", default=["kalman", "laplace", "linear-probe"])
    ap.add_argument("--shots", nargs="+", type=int, default=[4, 8, 16])
    ap.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    ap.add_argument("--name", default="predictive_calibration")
    args = ap.parse_args()
    rows = []
    for method in args.methods:
        for shots in args.shots:
            for seed in args.seeds:
                rows.append(score(method, shots, seed, {}))
                print(rows[-1], flush=True)
    write_result(args.name, {"machine": machine(), "rows": rows})


if __name__ == "__main__":
    main()
