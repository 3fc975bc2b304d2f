"""One run end to end: data -> cached features -> few-shot split -> fit -> evaluate -> outputs.

Output contract in ``out``: ``config.json`` (all needed to reproduce), ``metrics.json``,
``predictions.npz`` (probabilities and labels per evaluation set) and ``checkpoint.pt`` when
the method has weights. Extra writers (e.g. ArviZ diagnostics) hook in via ``RUN_HOOKS``.
"""

from __future__ import annotations

import dataclasses
import pickle
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import pyro_clip
from pyro_clip.backbones import DualEncoder, create_backbone
from pyro_clip.data import (
    LabeledImages,
    SubsetImages,
    base_new_classes,
    default_eval_datasets,
    eval_class_ids,
    few_shot_indices,
    load_dataset,
    subsample_classes,
)
from pyro_clip.data.eval_sets import check_split_classes
from pyro_clip.data.pixels import PixelRows
from pyro_clip.data.registry import load_splits
from pyro_clip.diagnostics.hooks import diagnose_run
from pyro_clip.diagnostics.metrics import classification_metrics, harmonic_mean
from pyro_clip.errors import BackboneError, DataError
from pyro_clip.features.cache import FeatureCache, FeatureSet
from pyro_clip.features.views import encode_views
from pyro_clip.methods import Method, MethodContext, Prediction, create_method, get_method_class
from pyro_clip.methods.base import to_device
from pyro_clip.pipeline.config import RunConfig
from pyro_clip.runtime import Runtime
from pyro_clip.utils.io import read_json, save_npz, save_torch, write_json
from pyro_clip.utils.run_dirs import fresh_run_dir, point_latest, run_dir_name
from pyro_clip.utils.seeding import seed_everything


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
    #: ``{"<dataset>/<split>": {"n_images": n, "n_skipped": k}}`` (``--skip-corrupt``)
    data_report: dict[str, dict[str, int]] = field(default_factory=dict)
    #: predictions on the few-shot training set (the data the posterior is fitted to)
    train: Evaluation | None = None
    #: the run's ArviZ ``InferenceData`` (set by the diagnostics hook; also in ``idata.nc``)
    idata: Any = None
    #: images of classes the method was not fitted to, predicted over its fitted classes
    #: (base-to-new: ``new``), which the diagnostics hook scores as semantic OOD
    semantic_ood: dict[str, Evaluation] = field(default_factory=dict)


#: callables ``hook(result)`` run after the standard outputs are written; the diagnostics
#: hook (idata.nc, calibration/OOD/PPC metrics, plots) is registered for every run
RUN_HOOKS: list[Callable[[RunResult], None]] = [diagnose_run]

#: one set of weights per (spec, device) per process; never handed out itself
_BACKBONES: dict[tuple[str, str], DualEncoder] = {}
#: the run folder's record of a folder data set's train / val / test split
SPLIT_FILE = "split.json"


def get_backbone(spec: str, runtime: Runtime | None = None) -> DualEncoder:
    """The backbone ``spec`` computing under ``runtime`` (default CPU fp32).

    Backbones are expensive to build: the weights are built once per (spec, device) per
    process and moved to the device once; each call returns a view of them
    (:meth:`DualEncoder.with_runtime`) with its own precision, so a later call with other
    settings never changes a backbone an earlier caller holds.
    """
    runtime = runtime or Runtime()
    key = (spec, str(runtime.device))
    if key not in _BACKBONES:
        _BACKBONES[key] = create_backbone(spec).to_runtime(Runtime(runtime.device))
    return _BACKBONES[key].with_runtime(runtime)


def load_dataset_reported(cfg: RunConfig, dataset: str, split: str,
                          report: dict[str, dict[str, int]]) -> LabeledImages:
    """``load_dataset`` with ``skip_corrupt``; ``report`` receives its image and skipped counts."""
    # embedded sets ignore root and skip_corrupt
    images = load_dataset(dataset, split, root=cfg.data_root, skip_corrupt=cfg.skip_corrupt)
    _report(report, dataset, split, images)
    return images


def _report(report: dict[str, dict[str, int]], dataset: str, split: str,
            images: LabeledImages) -> None:
    report[f"{dataset}/{split}"] = {"n_images": len(images),
                                    "n_skipped": len(getattr(images, "skipped", []))}


def load_features(cfg: RunConfig, backbone: DualEncoder, dataset: str, split: str) -> FeatureSet:
    images = load_dataset(dataset, split, root=cfg.data_root, skip_corrupt=cfg.skip_corrupt)
    return encode_images(cfg, backbone, images)


def encode_images(cfg: RunConfig, backbone: DualEncoder, images: LabeledImages) -> FeatureSet:
    """Features of ``images`` from the per-image cache (only uncached images are encoded);
    for methods that train the image encoder (``feature_kind == "pixels"``, MaPLe) the lazily
    decoded images themselves."""
    if get_method_class(cfg.method).feature_kind == "pixels":  # image encoder runs in fit
        return FeatureSet({"pixels": PixelRows(images, backbone.preprocess)},
                          torch.tensor(np.asarray(images.labels), dtype=torch.long),
                          list(images.classnames), images.name)
    cache = FeatureCache(cfg.cache_dir, workers=cfg.workers)
    return cache.get(backbone, images, batch_size=cfg.batch_size, progress=cfg.progress)


@dataclass
class RunImages:
    """The images one run encodes, chosen from labels and class names before any encoding."""

    train: LabeledImages
    val: LabeledImages
    test: LabeledImages
    #: extra evaluation sets, already cut to the classes the run can score
    extra: dict[str, LabeledImages]
    base_ids: list[int] | None = None
    new_ids: list[int] | None = None
    #: per loaded split: number of images and of corrupt images skipped (``skip_corrupt``)
    report: dict[str, dict[str, int]] = field(default_factory=dict)
    #: how a folder data set was split, as a split file (written to the run as split.json)
    split_record: dict[str, Any] | None = None
    #: one line saying how the data set was split (folder data sets)
    split_summary: str | None = None


def select_images(cfg: RunConfig) -> RunImages:
    """List the splits, draw the few-shot sample and check the evaluation sets' classes.

    Only the K-shot train sample, the min(K, 4)-shot validation sample (Dassl), the test
    split and the evaluation sets are returned; under base-to-new the train/val samples and
    the evaluation sets are cut to the base classes. Class-incompatible evaluation sets raise
    ``DataError`` here, before a single image is encoded.
    """
    report: dict[str, dict[str, int]] = {}
    extra_kw = {"split_file": cfg.split_file} if cfg.split_file else {}
    splits = load_splits(cfg.dataset, cfg.data_root, skip_corrupt=cfg.skip_corrupt, **extra_kw)
    train_all, test = splits.train, splits.test
    val_all = splits.val if splits.val is not None else train_all
    for split, images in (("train", train_all), ("val", splits.val), ("test", test)):
        if images is not None:
            _report(report, cfg.dataset, split, images)
    check_split_classes(train_all, test, cfg.protocol)
    train_idx, val_idx = few_shot_indices(
        train_all.labels, None if val_all is train_all else val_all.labels, cfg.shots, cfg.seed
    )
    base_ids = new_ids = keep = None
    if cfg.protocol == "base-to-new":
        base_ids, new_ids = base_new_classes(train_all.num_classes)
        keep = [train_all.classnames[c] for c in base_ids]
        train_idx = train_idx[np.isin(train_all.labels[train_idx], base_ids)]
        val_idx = val_idx[np.isin(val_all.labels[val_idx], base_ids)]
    val_tag = f"{min(cfg.shots, 4)}shot-seed{cfg.seed}"
    train = SubsetImages(train_all, train_idx, class_ids=base_ids,
                         name=f"{train_all.name}/{cfg.shots}shot-seed{cfg.seed}")
    val = SubsetImages(val_all, val_idx, class_ids=base_ids, name=f"{val_all.name}/{val_tag}")
    companions = default_eval_datasets(cfg.dataset)
    extra: dict[str, LabeledImages] = {}
    for name in cfg.eval_datasets or []:
        try:
            images = load_dataset_reported(cfg, name, "test", report)
        except DataError as exc:
            why = (f"{name} is a default evaluation set of {cfg.dataset}" if name in companions
                   else f"{name} was requested as an evaluation set")
            raise DataError(f"{exc} ({why}; pass --no-eval-datasets to skip it)") from exc
        ids = eval_class_ids(name, images.classnames, cfg.dataset, train_all.classnames,
                             keep, companions)
        extra[name] = images if ids is None else subsample_classes(images, ids)
    return RunImages(train, val, test, extra, base_ids, new_ids, report, splits.record,
                     splits.summary)


def augmented_train(cfg: RunConfig, backbone: DualEncoder, images: LabeledImages,
                    train: FeatureSet, augment: str, n_views: int) -> FeatureSet:
    """``train`` plus ``n_views`` cached augmented views of its ``images`` (same rows, same
    order; :mod:`pyro_clip.features.views`), each view encoded once and cached."""
    views = encode_views(backbone, images, augment, n_views, cfg.seed,
                         FeatureCache(cfg.cache_dir, workers=cfg.workers), cfg.batch_size,
                         cfg.progress)
    return FeatureSet({**train.features, **views}, train.labels, train.classnames, train.name)


def evaluate(method: Method, name: str, data: FeatureSet) -> Evaluation:
    """Predict ``data`` without autograd (prediction never needs gradients)."""
    features = data.features[method.feature_kind]
    with torch.no_grad():
        pred = method.predict(features, data.classnames)
    ev = Evaluation(name, pred, data.labels, list(data.classnames), features=features)
    ev.metrics = classification_metrics(pred.probs, data.labels)
    return ev


def eval_feature_sets(cfg: RunConfig, backbone: DualEncoder,
                      images: RunImages) -> dict[str, FeatureSet]:
    """A run's evaluation sets: ``test`` (or ``base`` and ``new``) and the extra sets."""
    test = encode_images(cfg, backbone, images.test)
    eval_sets: dict[str, FeatureSet] = {}
    if cfg.protocol == "base-to-new":
        eval_sets["base"] = test.restrict_classes(images.base_ids)
        eval_sets["new"] = test.restrict_classes(images.new_ids)
    else:
        eval_sets["test"] = test
    for extra, extra_images in images.extra.items():
        eval_sets[extra] = encode_images(cfg, backbone, extra_images)
    return eval_sets


def predict_as_ood(method: Method, name: str, data: FeatureSet,
                   classnames: list[str]) -> Evaluation:
    """Predict ``data``'s images over ``classnames``, classes they do not belong to (semantic
    OOD: no label is right, so the labels are -1 and no accuracy is computed)."""
    features = data.features[method.feature_kind]
    with torch.no_grad():
        pred = method.predict(features, classnames)
    return Evaluation(name, pred, torch.full((len(data),), -1, dtype=torch.long),
                      list(classnames), features=features)


def run(cfg: RunConfig) -> RunResult:
    """Execute ``cfg`` and write the output contract; returns everything in memory too."""
    cfg = cfg.validate().resolved()
    if cfg.out is None:  # a fresh folder per run; runs/latest follows it
        out = fresh_run_dir(run_dir_name(cfg.method, cfg.dataset, cfg.shots, cfg.seed))
        point_latest(out)
        cfg = dataclasses.replace(cfg, out=str(out))
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    runtime = Runtime.resolve(cfg.device, cfg.precision)
    started = time.time()
    method = create_method(cfg.method, **cfg.options)  # bad names/options: before any work
    images = select_images(cfg)  # data errors surface here, before weights or encoding
    if images.split_record is not None:
        write_json(out / SPLIT_FILE, images.split_record)
        print(f"{images.split_summary}; recorded in {out / SPLIT_FILE} (reuse: --split-file)",
              file=sys.stderr, flush=True)
    backbone = get_backbone(cfg.backbone, runtime)
    train = encode_images(cfg, backbone, images.train)
    val = encode_images(cfg, backbone, images.val)
    eval_sets = eval_feature_sets(cfg, backbone, images)

    method.setup(MethodContext(backbone, cfg.templates, cfg.seed, out, cfg.progress, runtime))
    views = method.train_views()
    if views:
        train = augmented_train(cfg, backbone, images.train, train, *views)
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

    train_ev = evaluate(method, "train", train)
    semantic = ({"new": predict_as_ood(method, "new", eval_sets["new"], train.classnames)}
                if cfg.protocol == "base-to-new" else {})
    result = RunResult(cfg, method, evaluations, metrics, out, runtime, images.report,
                       train=train_ev, semantic_ood=semantic)
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
        "data_report": result.data_report,
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
            "state": to_device(method.state_dict(), "cpu"),  # loads on any device
        },
    )


def read_run_config(run_dir: str | Path) -> tuple[RunConfig, dict[str, Any]]:
    """A run folder's :class:`RunConfig` and the whole ``config.json`` it was read from."""
    cfg_data = read_json(Path(run_dir) / "config.json")
    # fields added after a run was written take their defaults
    fields = {k: cfg_data[k] for k in RunConfig.__dataclass_fields__ if k in cfg_data}
    return RunConfig.from_dict(fields), cfg_data


def _read_checkpoint(path: Path, runtime: Runtime) -> dict[str, Any]:
    """``torch.load`` of a run's checkpoint; missing or damaged -> one-line :class:`DataError`."""
    if not path.is_file():
        raise DataError(f"{path} is missing: the run folder has config.json but no trained "
                        "weights; re-run 'pyro-clip fit' for it (same options) to re-create it")
    try:
        return torch.load(path, map_location=runtime.device, weights_only=False)
    except (OSError, EOFError, RuntimeError, pickle.UnpicklingError) as exc:
        raise DataError(f"{path} is damaged ({type(exc).__name__}); re-run 'pyro-clip fit' "
                        "for that run (same options) to re-create it") from exc


def load_trained_method(
    run_dir: str | Path, backbone: DualEncoder | None = None, runtime: Runtime | None = None
) -> Method:
    """Rebuild a fitted method from a run folder (config + checkpoint), checking the backbone.

    ``runtime``: where to compute now (default: the backbone's, else the CPU), whatever device
    the run was trained on; the checkpoint's CPU tensors are mapped there (``map_location``).
    """
    run_dir = Path(run_dir)
    cfg, cfg_data = read_run_config(run_dir)
    cfg = cfg.resolved()  # runs written before templates defaulted to the data set's
    runtime = runtime or (backbone.runtime if backbone is not None else Runtime())
    backbone = backbone or get_backbone(cfg.backbone, runtime)
    method = create_method(cfg.method, **cfg.options)
    method.setup(MethodContext(backbone, cfg.templates, cfg.seed, None, cfg.progress, runtime))
    method.selected = dict(cfg_data.get("selected_hyperparameters", {}))
    if method.has_weights:
        ckpt = _read_checkpoint(run_dir / "checkpoint.pt", runtime)
        if ckpt["backbone_fingerprint"] != backbone.fingerprint():
            raise BackboneError(
                f"checkpoint {run_dir / 'checkpoint.pt'} was trained on backbone "
                f"{ckpt['backbone']!r}, but the backbone given is {backbone.name!r} (different "
                "weights or preprocessing); evaluate with the backbone it was trained on"
            )
        method.load_state_dict(ckpt["state"])
    return method

