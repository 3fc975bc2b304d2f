"""One run end to end: data -> cached features -> few-shot split -> fit -> evaluate -> outputs.

Output contract in ``out``: ``config.json`` (all needed to reproduce), ``metrics.json``,
``predictions.npz`` (probabilities and labels per evaluation set) and ``checkpoint.pt`` when
the method has weights. Extra writers (e.g. ArviZ diagnostics) hook in via ``RUN_HOOKS``.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import pyro_clip
from pyro_clip.backbones import DualEncoder, create_backbone
from pyro_clip.config import RunConfig
from pyro_clip.data import base_new_classes, few_shot_indices, has_validation_split, load_dataset
from pyro_clip.data.augment import encode_views
from pyro_clip.data.base import SubsetImages
from pyro_clip.data.pixels import PixelRows
from pyro_clip.errors import BackboneError
from pyro_clip.features import FeatureCache, FeatureSet
from pyro_clip.io import read_json, save_npz, save_torch, write_json
from pyro_clip.methods import Method, MethodContext, Prediction, create_method, get_method_class
from pyro_clip.metrics import classification_metrics, harmonic_mean
from pyro_clip.runtime import Runtime
from pyro_clip.seeding import seed_everything


@dataclass
class Evaluation:
    """Predictions of one method on one labelled feature set."""

    name: str
    prediction: Prediction
    labels: torch.Tensor
    classnames: list[str]
    metrics: dict[str, Any] = field(default_factory=dict)
    #: the (N, D) image features predicted on (for methods' ``ood_scores`` in diagnostics)
    features: torch.Tensor | None = None


@dataclass
class RunResult:
    config: RunConfig
    method: Method
    evaluations: dict[str, Evaluation]
    metrics: dict[str, Any]
    out: Path
    runtime: Runtime = field(default_factory=Runtime)


#: callables ``hook(result)`` run after the standard outputs are written (diagnostics etc.)
RUN_HOOKS: list[Callable[[RunResult], None]] = []

_BACKBONES: dict[str, DualEncoder] = {}


def get_backbone(spec: str) -> DualEncoder:
    """Backbones are expensive to build; one instance per spec per process."""
    if spec not in _BACKBONES:
        _BACKBONES[spec] = create_backbone(spec)
    return _BACKBONES[spec]


def load_features(cfg: RunConfig, backbone: DualEncoder, dataset: str, split: str) -> FeatureSet:
    images = load_dataset(dataset, split, root=cfg.data_root)  # embedded sets ignore root
    if get_method_class(cfg.method).feature_kind == "pixels":  # image encoder runs in fit
        return FeatureSet({"pixels": PixelRows(images, backbone.preprocess)},
                          torch.tensor(np.asarray(images.labels), dtype=torch.long),
                          list(images.classnames), images.name)
    cache = FeatureCache(cfg.cache_dir)
    return cache.get(backbone, images, batch_size=cfg.batch_size, progress=cfg.progress)


def augmented_train(cfg: RunConfig, backbone: DualEncoder, train_all: FeatureSet,
                    train_idx: np.ndarray, train: FeatureSet, augment: str,
                    n_views: int) -> FeatureSet:
    """``train`` plus ``n_views`` cached augmented views of its images (pyro_clip.data.augment).

    Views are encoded for the few-shot rows ``train_idx`` and cut to ``train``'s classes in the
    order :meth:`FeatureSet.restrict_classes` keeps them.
    """
    images = SubsetImages(load_dataset(cfg.dataset, "train", root=cfg.data_root), train_idx)
    views = encode_views(backbone, images, augment, n_views, cfg.seed,
                         FeatureCache(cfg.cache_dir), cfg.batch_size, cfg.progress)
    labels = train_all.labels[torch.as_tensor(train_idx)]
    keep = torch.isin(labels, torch.as_tensor(
        [train_all.classnames.index(c) for c in train.classnames])).nonzero().flatten()
    return FeatureSet({**train.features, **{k: v[keep] for k, v in views.items()}},
                      train.labels, train.classnames, train.name)


def evaluate(method: Method, name: str, data: FeatureSet) -> Evaluation:
    """Predict ``data`` without autograd (prediction never needs gradients)."""
    features = data.features[method.feature_kind]
    with torch.no_grad():
        pred = method.predict(features, data.classnames)
    ev = Evaluation(name, pred, data.labels, list(data.classnames), features=features)
    ev.metrics = classification_metrics(pred.probs, data.labels)
    return ev


def run(cfg: RunConfig) -> RunResult:
    """Execute ``cfg`` and write the output contract; returns everything in memory too."""
    cfg.validate()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    runtime = Runtime.resolve(cfg.device, cfg.precision)
    started = time.time()
    backbone = get_backbone(cfg.backbone)
    train_all = load_features(cfg, backbone, cfg.dataset, "train")
    val_all = (load_features(cfg, backbone, cfg.dataset, "val")
               if has_validation_split(cfg.dataset) else train_all)
    test = load_features(cfg, backbone, cfg.dataset, "test")

    train_idx, val_idx = few_shot_indices(
        train_all.labels.numpy(),
        None if val_all is train_all else val_all.labels.numpy(),
        cfg.shots,
        cfg.seed,
    )
    train, val = train_all.subset(train_idx), val_all.subset(val_idx)
    eval_sets: dict[str, FeatureSet] = {}
    if cfg.protocol == "base-to-new":
        base_ids, new_ids = base_new_classes(len(train_all.classnames))
        train, val = train.restrict_classes(base_ids), val.restrict_classes(base_ids)
        eval_sets["base"] = test.restrict_classes(base_ids)
        eval_sets["new"] = test.restrict_classes(new_ids)
    else:
        eval_sets["test"] = test
    for extra in cfg.eval_datasets:
        eval_sets[extra] = load_features(cfg, backbone, extra, "test")
        if cfg.protocol == "base-to-new":
            eval_sets[extra] = eval_sets[extra].restrict_classes(base_ids)

    method = create_method(cfg.method, **cfg.options)
    method.setup(MethodContext(backbone, cfg.templates, cfg.seed, out, cfg.progress, runtime))
    views = getattr(method, "train_views", lambda: None)()  # (augment, n_views) or None
    if views:
        train = augmented_train(cfg, backbone, train_all, train_idx, train, *views)
    fit_start = time.time()
    method.fit(train, val)
    fit_seconds = time.time() - fit_start

    evaluations = {name: evaluate(method, name, data) for name, data in eval_sets.items()}
    metrics: dict[str, Any] = {name: ev.metrics for name, ev in evaluations.items()}
    if cfg.protocol == "base-to-new":
        b, n = metrics["base"]["accuracy"], metrics["new"]["accuracy"]
        metrics["base_to_new"] = {"base": b, "new": n, "h": harmonic_mean(b, n)}
    metrics["fit_seconds"] = fit_seconds
    metrics["total_seconds"] = time.time() - started

    result = RunResult(cfg, method, evaluations, metrics, out, runtime)
    write_outputs(result, backbone, train)
    for hook in RUN_HOOKS:
        hook(result)
    return result


def write_outputs(result: RunResult, backbone: DualEncoder, train: FeatureSet) -> None:
    cfg, method, out = result.config, result.method, result.out
    config = {
        **cfg.to_dict(),
        "resolved_options": method.options,
        "selected_hyperparameters": method.selected,
        "backbone_fingerprint": backbone.fingerprint(),
        "runtime": result.runtime.describe(),
        "train_classnames": train.classnames,
        "n_train": len(train),
        "versions": {
            "pyro_clip": pyro_clip.__version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
    }
    write_json(out / "config.json", config)
    write_json(out / "metrics.json", result.metrics)
    arrays: dict[str, np.ndarray] = {}
    for name, ev in result.evaluations.items():
        arrays[f"{name}/probs"] = ev.prediction.probs.float().numpy()
        arrays[f"{name}/labels"] = ev.labels.numpy()
    save_npz(out / "predictions.npz", **arrays)
    if method.has_weights:
        save_checkpoint(out / "checkpoint.pt", method, backbone, train.classnames)


def save_checkpoint(path: Path, method: Method, backbone: DualEncoder, classnames) -> None:
    save_torch(
        path,
        {
            "method": method.name,
            "options": method.options,
            "selected": method.selected,
            "backbone": backbone.name,
            "backbone_fingerprint": backbone.fingerprint(),
            "classnames": list(classnames),
            "state": method.state_dict(),
        },
    )


def read_run_config(run_dir: str | Path) -> tuple[RunConfig, dict[str, Any]]:
    """A run folder's :class:`RunConfig` and the whole ``config.json`` it was read from."""
    cfg_data = read_json(Path(run_dir) / "config.json")
    return RunConfig.from_dict({k: cfg_data[k] for k in RunConfig.__dataclass_fields__}), cfg_data


def load_trained_method(run_dir: str | Path, backbone: DualEncoder | None = None) -> Method:
    """Rebuild a fitted method from a run folder (config + checkpoint), checking the backbone."""
    run_dir = Path(run_dir)
    cfg, cfg_data = read_run_config(run_dir)
    backbone = backbone or get_backbone(cfg.backbone)
    method = create_method(cfg.method, **cfg.options)
    method.setup(MethodContext(backbone, cfg.templates, cfg.seed, None, cfg.progress))
    method.selected = dict(cfg_data.get("selected_hyperparameters", {}))
    if method.has_weights:
        ckpt = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=False)
        if ckpt["backbone_fingerprint"] != backbone.fingerprint():
            raise BackboneError(
                f"checkpoint {run_dir / 'checkpoint.pt'} was trained on backbone "
                f"{ckpt['backbone']!r}, but the backbone given is {backbone.name!r} (different "
                "weights or preprocessing); evaluate with the backbone it was trained on"
            )
        method.load_state_dict(ckpt["state"])
    return method


from pyro_clip.diagnostics.hooks import register_diagnostics  # noqa: E402

register_diagnostics(RUN_HOOKS)  # idata.nc, calibration/OOD metrics and plots for every run
