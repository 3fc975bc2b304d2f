"""``pyro-clip update``: add labelled images to a fitted run without refitting (Kalman only).

The run's model is loaded, filtered once more over the new images' features
(:meth:`~pyro_clip.methods.kalman.KalmanAdapter.update`; classes it never saw are added with
their zero-shot prior) and evaluated on the run's own evaluation sets. Everything goes to a
new run folder with the full output contract; the old folder is never written. Images the
model has already seen (the run's few-shot sample and earlier updates, listed by item key in
``labelled_keys.json``) are skipped, so no image is counted twice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from pyro_clip.data import SubsetImages, load_dataset, sample_few_shot
from pyro_clip.errors import ConfigError, DataError
from pyro_clip.features.cache import FeatureSet
from pyro_clip.pipeline.run import (
    RUN_HOOKS,
    RunResult,
    encode_images,
    eval_feature_sets,
    evaluate,
    get_backbone,
    load_trained_method,
    read_run_config,
    select_images,
    write_outputs,
)
from pyro_clip.runtime import Runtime
from pyro_clip.utils.io import read_json, write_json

LABELLED_KEYS = "labelled_keys.json"


def _in_model_classes(data: FeatureSet, classnames: list[str]) -> FeatureSet:
    """``data`` relabelled into ``classnames`` (every labelled class must be in it)."""
    index = {c: i for i, c in enumerate(classnames)}
    remap = torch.tensor([index.get(c, -1) for c in data.classnames], dtype=torch.long)
    return FeatureSet(data.features, remap[data.labels], list(classnames), data.name)


def _concat(a: FeatureSet, b: FeatureSet) -> FeatureSet:
    return FeatureSet({k: torch.cat([a.features[k], b.features[k]]) for k in a.features},
                      torch.cat([a.labels, b.labels]), a.classnames, f"{a.name}+{b.name}")


def update_run(
    run_dir: str | Path, dataset: str, out: str | Path, split: str = "train",
    shots: int | None = None, seed: int | None = None, data_root: str | None = None,
) -> RunResult:
    """Filter ``dataset``'s ``split`` (``shots`` per class drawn with ``seed``, default all
    images) into the model of ``run_dir``; write a new run folder ``out``."""
    run_dir, out = Path(run_dir), Path(out)
    if not (run_dir / "config.json").exists():
        raise DataError(f"{run_dir} is not a run folder (no config.json); pass a 'fit' --out "
                        "folder")
    if out.resolve() == run_dir.resolve():
        raise ConfigError(f"--out {out} is the run being updated; pass a new folder (the old "
                          "run is kept as it is)")
    cfg, cfg_data = read_run_config(run_dir)
    cfg = cfg.resolved()
    precision = cfg.precision if cfg.precision != "fp16" or torch.cuda.is_available() else "fp32"
    runtime = Runtime.resolve("auto", precision)
    backbone = get_backbone(cfg.backbone, runtime)
    method = load_trained_method(run_dir, backbone)
    if not hasattr(method, "update"):
        raise ConfigError(f"pyro-clip update needs a kalman run; {run_dir} is a "
                          f"{method.name!r} run (refit it with the new images instead)")
    images = select_images(cfg)
    seen_keys = (read_json(run_dir / LABELLED_KEYS) if (run_dir / LABELLED_KEYS).exists()
                 else images.train.item_keys())
    new_all = load_dataset(dataset, split, root=data_root or cfg.data_root,
                           skip_corrupt=cfg.skip_corrupt)
    idx = (np.arange(len(new_all)) if shots is None
           else sample_few_shot(np.asarray(new_all.labels), shots, cfg.seed + 1 if seed is None
                                else seed))
    keys = new_all.item_keys()
    seen = set(seen_keys)
    idx = np.array([i for i in idx if keys[i] not in seen], dtype=np.int64)
    if len(idx) == 0:
        raise DataError(f"every selected image of {dataset}/{split} was already labelled in "
                        f"{run_dir}; pass other images (another --seed or --split)")
    new_images = SubsetImages(new_all, idx, name=f"{new_all.name}/update")
    update_cfg = type(cfg).from_dict({**cfg.to_dict(), "out": str(out),
                                      "data_root": data_root or cfg.data_root})
    added = encode_images(update_cfg, backbone, new_images)
    record: dict[str, Any] = method.update(added)

    eval_sets = eval_feature_sets(cfg, backbone, images)
    evaluations = {name: evaluate(method, name, data) for name, data in eval_sets.items()}
    metrics: dict[str, Any] = {name: ev.metrics for name, ev in evaluations.items()}
    if cfg.protocol == "base-to-new":
        from pyro_clip.diagnostics.metrics import harmonic_mean

        b, n = metrics["base"]["accuracy"], metrics["new"]["accuracy"]
        metrics["base_to_new"] = {"base": b, "new": n, "h": harmonic_mean(b, n)}
    classes = list(method.train_classnames)
    labelled = _concat(_in_model_classes(encode_images(cfg, backbone, images.train), classes),
                       _in_model_classes(added, classes))
    out.mkdir(parents=True, exist_ok=True)
    result = RunResult(update_cfg, method, evaluations, metrics, out, runtime, images.report,
                       train=evaluate(method, "train", labelled))
    write_outputs(result, backbone, labelled)
    config = read_json(out / "config.json")
    config["updated_from"] = str(run_dir)
    config["update"] = {"dataset": dataset, "split": split, "shots": shots, "seed": seed,
                        "n_images": len(idx), **record}
    config["update_history"] = [*cfg_data.get("update_history", []), config["update"]]
    all_keys = [*seen_keys, *(keys[i] for i in idx)]
    config["n_train"] = len(all_keys)  # every labelled image so far, earlier updates included
    write_json(out / "config.json", config)
    write_json(out / LABELLED_KEYS, all_keys)
    for hook in RUN_HOOKS:
        hook(result)
    return result
