"""``pyro-clip evaluate``: a fitted run on another data set (cross-data-set / domain shift).

It writes what a ``fit`` run writes for its evaluation sets: ``metrics.json`` with the
calibration, selective-prediction and posterior-predictive-check metrics of the diagnostics
hook, ``predictions.npz``, ``idata.nc`` (the held-out ``predictions`` group only: the training
data is not re-read, so there is no ``log_likelihood`` and LOO is refused) and the plots.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pyro_clip.diagnostics.hooks import diagnose_run
from pyro_clip.errors import DataError
from pyro_clip.pipeline.run import (
    RunResult,
    evaluate,
    get_backbone,
    load_features,
    load_trained_method,
    read_run_config,
)
from pyro_clip.runtime import Runtime
from pyro_clip.utils.io import check_out_dir, save_npz, write_json


def evaluate_run(
    run_dir: str | Path, dataset: str, out: str | Path, data_root: str | None = None,
    device: str = "auto", precision: str = "fp32",
) -> dict[str, Any]:
    """Evaluate the method of ``run_dir`` on the test split of ``dataset``; write the contract.

    ``device`` / ``precision`` say where and how to compute now, whatever the run was trained
    with (precision is not part of a backbone's identity: a run fitted in bf16 evaluates in
    fp32); ``config.json`` records them under ``evaluation_runtime``.
    """
    run_dir, out = Path(run_dir), check_out_dir(out)
    if not (run_dir / "config.json").exists():
        raise DataError(
            f"{run_dir} is not a run folder (no config.json); pass a 'fit' --out folder"
        )
    cfg, cfg_data = read_run_config(run_dir)
    cfg.data_root = data_root
    runtime = Runtime.resolve(device, precision)
    backbone = get_backbone(cfg.backbone, runtime)
    method = load_trained_method(run_dir, backbone)
    test = load_features(cfg, backbone, dataset, "test")
    ev = evaluate(method, dataset, test)
    write_json(
        out / "config.json",
        {**cfg_data, "evaluated_run": str(run_dir), "eval_dataset": dataset,
         "data_root": data_root, "evaluation_runtime": runtime.describe()},
    )
    save_npz(
        out / "predictions.npz",
        **{f"{dataset}/probs": ev.prediction.probs.float().numpy(),
           f"{dataset}/labels": ev.labels.numpy()},
    )
    cfg.eval_datasets = []  # the evaluated set is the only one: no OOD pairing
    result = RunResult(cfg, method, {dataset: ev}, {dataset: ev.metrics}, out)
    diagnose_run(result)  # writes metrics.json, idata.nc and the plots
    return result.metrics[dataset]
