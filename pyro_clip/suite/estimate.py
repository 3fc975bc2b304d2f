"""Rough memory and time of each suite run from its sizes, before any weight or image is loaded.

Memory is the peak of (a) the backbone's weights plus one feature-extraction batch and (b) the
method's own state while fitting and predicting, from the number of training classes ``C``,
the feature width ``D``, the shots and the options:

* Kalman: the covariance state from :func:`pyro_clip.inference.covariance.registry.
  estimate_bytes` (times 3 for the dense structures' update temporaries), refused above
  ``max_state_gib`` as the method itself does, and its S weight draws (S, C (D + 1));
* Laplace: the Hessian factors and the GLM predictive's last-layer Jacobians
  ``(chunk, C, C D)`` in float64;
* the Monte Carlo predictive of both (:func:`predictive_bytes`): one chunk of draws
  (:data:`~pyro_clip.inference.predictive.PREDICTIVE_BYTES`), the probabilities, the (S, N)
  uniforms and replicates of the test and training sets, their kept logit draws
  (:data:`~pyro_clip.inference.predictive.KEPT_SAMPLES_BYTES`), the diagnostics' copies and
  the prior's draws for ArviZ (extra evaluation sets, e.g. the ImageNet variants, add their
  own probabilities and replicates, not counted);
* prompt learners: the backbone weights plus the activations the text (and for MaPLe the image)
  transformer keeps for the backward pass, ``s b (34 h + 5 a s)`` bytes per layer in 16-bit
  (Korthikanti et al. 2022, "Reducing Activation Recomputation", eq. 2), doubled in fp32; ``b``
  is ``C`` text prompts (``batch x C`` for CoCoOp) and ``s`` the truncated prompt length;
* the rest: features and their heads, small by comparison.

These are rough bounds (allocator overheads, CUDA context and library workspaces are not
counted); they catch runs that are off by orders of magnitude, such as a dense covariance on
a thousand classes. Time is rougher still: the benchmark's fit seconds per method and shots
(``benchmarks/results/suite_offline.json``, ConSE on CPU, 10 or 5 classes) scaled by the class
count (squared for the dense Kalman and Laplace structures).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from pyro_clip.errors import ConfigError

#: classes of the CoOp/Dassl benchmarks (CoOp, Zhou et al. IJCV 2022, Table 5) and the ImageNet
#: variants (ImageNet-A and -R cover 200 of the 1000 classes)
DATASET_CLASSES = {
    "fashion-mnist": 10, "fashion-mnist-c": 10, "imagenet": 1000, "caltech-101": 100,
    "oxford_pets": 37, "stanford_cars": 196, "oxford_flowers": 102, "food-101": 101,
    "fgvc_aircraft": 100, "sun397": 397, "dtd": 47, "eurosat": 10, "ucf101": 101,
    "imagenet-v2": 1000, "imagenet-sketch": 1000, "imagenet-a": 200, "imagenet-r": 200,
}
#: test images of the benchmarks (CoOp Table 5; the embedded Fashion-MNIST subset: 1,000)
TEST_IMAGES = {
    "fashion-mnist": 1000, "fashion-mnist-c": 1000, "imagenet": 50000, "caltech-101": 2465,
    "oxford_pets": 3669, "stanford_cars": 8041, "oxford_flowers": 2463, "food-101": 30300,
    "fgvc_aircraft": 3333, "sun397": 19850, "dtd": 1692, "eurosat": 8100, "ucf101": 3783,
}
#: declared device memory when the suite does not set ``device_memory_gib`` and runs on a GPU:
#: an 80 GB A100 / H100, the papers' class of card
DEFAULT_GPU_GIB = 80.0
#: prompt tokens kept after cutting at the longest end-of-text (template + class name words)
PROMPT_WORDS = 12
#: queries per chunk assumed when a method scores a batch against every training example
QUERY_CHUNK = 1024
BENCH_RESULTS = Path(__file__).resolve().parents[2] / "benchmarks/results/suite_offline.json"
GIB = 2**30


@dataclass(frozen=True)
class BackboneSize:
    """What the estimate needs of a backbone: feature width, weights, transformer shapes."""

    dim: int
    params: int
    text_width: int
    text_layers: int
    text_heads: int
    image_width: int = 0
    image_layers: int = 0
    image_heads: int = 0
    image_tokens: int = 0


def _transformer_params(width: int, layers: int) -> int:
    """``12 W^2`` per layer (attention 4 W^2, MLP 8 W^2), biases and norms ignored."""
    return 12 * width * width * layers


@cache
def backbone_size(spec: str) -> BackboneSize:
    """Sizes of ``conse`` (EfficientNet-Lite0 + MiniLM-L6, D = 384) or an open_clip model
    from its config (no weights are read)."""
    if spec == "conse":
        return BackboneSize(dim=384, params=27_000_000, text_width=384, text_layers=6,
                            text_heads=12)
    if not spec.startswith("open_clip:"):
        raise ConfigError(f"cannot size backbone {spec!r}; use 'conse' or 'open_clip:<model>'")
    import open_clip

    from pyro_clip.backbones.registry import _register_open_clip_configs, parse_open_clip_spec

    _register_open_clip_configs()
    model = parse_open_clip_spec(spec)[0]
    cfg = open_clip.get_model_config(model)
    if cfg is None:
        raise ConfigError(f"unknown open_clip model {model!r} in backbone {spec!r}")
    text, vision = cfg.get("text_cfg", {}), cfg.get("vision_cfg", {})
    tw, tl = int(text.get("width", 512)), int(text.get("layers", 12))
    params = _transformer_params(tw, tl) + int(text.get("vocab_size", 49408)) * tw
    vl = vision.get("layers", 12)
    if isinstance(vl, int) and vision.get("patch_size"):
        vw = int(vision.get("width", 768))
        tokens = (int(vision.get("image_size", 224)) // int(vision["patch_size"])) ** 2 + 1
        params += _transformer_params(vw, vl)
        return BackboneSize(int(cfg["embed_dim"]), params, tw, tl, int(text.get("heads", 8)),
                            vw, vl, max(1, vw // 64), tokens)
    # ResNet towers: rough, scaled from RN50 (about 38M visual parameters at width 64)
    blocks = sum(vl) if isinstance(vl, list | tuple) else 16
    params += int(38e6 * (int(vision.get("width", 64)) / 64) ** 2 * blocks / 16)
    return BackboneSize(int(cfg["embed_dim"]), params, tw, tl, int(text.get("heads", 8)))


def dataset_classes(name: str, data_root: str | None) -> int | None:
    """Classes of a data set: the benchmark table, or a folder data set's class folders."""
    if name in DATASET_CLASSES:
        return DATASET_CLASSES[name]
    if name == "folder" and data_root and Path(data_root).is_dir():
        root = Path(data_root)
        split = root / "train" if (root / "train").is_dir() else root
        return sum(p.is_dir() for p in split.iterdir()) or None
    return None


def _layer_activation_bytes(tokens: int, batch: int, width: int, heads: int,
                            fp32: bool) -> float:
    """Korthikanti et al. (2022) eq. 2: ``s b (34 h + 5 a s)`` bytes per layer in 16-bit."""
    return tokens * batch * (34 * width + 5 * heads * tokens) * (2 if fp32 else 1)


def predictive_bytes(draws: int, classes: int, n_test: int, n_train: int,
                     row_bytes: int = 0, floor: int = 0) -> float:
    """Peak bytes of a chunked Monte Carlo predictive with ``draws`` draws: one chunk
    (:func:`~pyro_clip.inference.predictive.row_chunk`, at least one row and at least
    ``floor`` bytes, as the method sizes it); the test set's
    float64 and float32 probabilities and (S, N) uniforms; the kept float32 draws of the test
    and training sets, plus twice the larger in float64 while the diagnostics take their
    log-softmax; the (S, N) replicates of both sets three times (prediction, NumPy copy,
    ArviZ) plus three (S, N) temporaries of the checks; and the prior's draws for ArviZ, one
    (N, C) draw at a time (four copies) with ``DEFAULT_DRAWS`` replicates per training row."""
    from pyro_clip.diagnostics.hooks import DEFAULT_DRAWS
    from pyro_clip.inference.predictive import KEPT_SAMPLES_BYTES, PREDICTIVE_BYTES, row_chunk

    rows = min(row_chunk(draws, classes, row_bytes, floor=floor), max(n_test, 1))
    chunk = max(PREDICTIVE_BYTES, floor, rows * (4 * 8 * draws * classes + row_bytes))
    test = 12 * n_test * classes + 8 * draws * n_test
    kept = [min(KEPT_SAMPLES_BYTES, 4 * draws * n * classes) for n in (n_test, n_train)]
    samples = sum(kept) + 4 * max(kept)
    replicates = 8 * draws * (3 * (n_test + n_train) + 3 * n_test)
    prior = 4 * 8 * n_train * classes + 2 * 8 * DEFAULT_DRAWS * n_train
    return chunk + test + samples + replicates + prior


def _kalman_bytes(options: dict[str, Any], classes: int, dim: int) -> tuple[float, str, str]:
    """``(peak bytes, detail, refusal)`` of the Kalman adapter's covariance state, and its
    cached weight draws (S, n) with their sampling temporary and the (S, C, D + 1) weights
    built for unseen classes (base-to-new)."""
    from pyro_clip.inference.covariance.registry import choose_structure, estimate_bytes

    if options.get("adapter", "linear") == "residual":
        rank = int(options.get("residual_rank", 4))
        n, blocks = 2 * dim * rank, rank
    else:
        n, blocks = classes * (dim + int(bool(options.get("bias", True)))), classes
    kind = str(options.get("covariance", "auto"))
    if kind == "auto":  # the structure the method itself picks at fit time
        kind = choose_structure(n, blocks, options)
    state = estimate_bytes(kind, n, blocks, int(options.get("rank", 10)))
    limit = float(options.get("max_state_gib", 8.0)) * GIB
    refusal = (f"kalman refuses covariance={kind}: its state is {_size(state)} > max_state_gib="
               f"{limit / GIB:g}" if state > limit else "")
    temporaries = 3 if kind in ("full", "block") else 2
    weights = 3 * 8 * int(options.get("mc_samples", 0)) * n
    return (temporaries * state + weights,
            f"covariance={kind} state {_size(state)}, weight draws {_size(weights / 3)}", refusal)


def _laplace_bytes(options: dict[str, Any], classes: int, dim: int) -> tuple[float, str]:
    """Hessian and one predictive call's Jacobians (the chunk's (rows, C, C) logit
    covariances are in :func:`predictive_bytes`' chunk)."""
    from pyro_clip.methods.laplace_head import predictive_chunk

    n, chunk = classes * dim, predictive_chunk(classes, dim)
    structure = options.get("hessian_structure", "kron")
    hessian = {"kron": dim * dim + classes * classes, "diag": n, "full": n * n}[structure]
    jacobians = chunk * classes * n  # (chunk, C, C D) last-layer Jacobians of the predictive
    peak = 8 * (2 * hessian + jacobians)
    return peak, f"{structure} Hessian, predictive Jacobians {_size(8 * jacobians)}"


def method_bytes(method: str, options: dict[str, Any], classes: int, shots: int,
                 size: BackboneSize, precision: str, n_test: int) -> tuple[float, str, str]:
    """``(peak bytes, detail, refusal)`` of ``method``'s own state and its test predictions
    (probabilities, and for the Monte Carlo heads :func:`predictive_bytes`); the backbone is
    not included."""
    d, n_train = size.dim, classes * shots
    views = int(options.get("n_views", 1)) if options.get("augment", "none") != "none" else 1
    features = 4 * d * (n_train * views + n_test) + 4 * n_test * classes
    fp32 = precision == "fp32"
    if method == "kalman":
        peak, detail, refusal = _kalman_bytes(options, classes, d)
        s = int(options["mc_samples"])
        linear = options.get("adapter", "linear") == "linear"  # chunks as large as (S, C, D+1)
        mc = predictive_bytes(s, classes, n_test, n_train,
                              floor=8 * s * classes * (d + 1) if linear else 0)
        return features + peak + mc, f"{detail}, predictive {_size(mc)}", refusal
    if method == "laplace":
        peak, detail = _laplace_bytes(options, classes, d)
        mc = predictive_bytes(int(options["n_samples"]), classes, n_test, n_train,
                              8 * 3 * classes * classes)
        return features + peak + mc, f"{detail}, predictive {_size(mc)}", ""
    if method == "linear-probe":  # L-BFGS: 20 pairs of (C, D) float64 history
        return features + 8 * 42 * classes * d, "L-BFGS history", ""
    if method.startswith("tip-adapter"):
        affinity = 4 * QUERY_CHUNK * n_train * 3
        return features + affinity, f"cache affinity of {QUERY_CHUNK} queries", ""
    if method == "clip-adapter":
        return features + 4 * 4 * d * d, "adapter", ""
    if method == "zero-shot":
        return features, "features", ""
    if method.startswith(("coop", "cocoop", "kgcoop", "maple")):
        n_ctx, batch = int(options.get("n_ctx", 4)), int(options.get("batch_size", 16))
        tokens = n_ctx + PROMPT_WORDS
        prompts = classes * (batch if method.startswith("cocoop") else 1)
        act = size.text_layers * _layer_activation_bytes(tokens, prompts, size.text_width,
                                                         size.text_heads, fp32)
        detail = f"text activations for {prompts} prompts"
        if method.startswith("maple") and size.image_layers:
            act += size.image_layers * _layer_activation_bytes(
                size.image_tokens + n_ctx, batch, size.image_width, size.image_heads, fp32)
            detail += f" + image activations for {batch} images"
        return features + act, detail, ""
    return features, "features (no method-specific estimate)", ""


def extraction_bytes(size: BackboneSize, batch_size: int, precision: str) -> float:
    """Backbone weights (fp32) plus one no-grad extraction batch through the image tower."""
    layer = _layer_activation_bytes(max(size.image_tokens, 197), batch_size,
                                    max(size.image_width, size.text_width),
                                    max(size.image_heads, size.text_heads, 1),
                                    precision == "fp32")
    return 4 * size.params + layer / 4  # inference keeps a fraction of a layer's activations


@cache
def _bench_seconds() -> dict[tuple[str, str, int], tuple[float, int]]:
    """``(method, protocol, shots) -> (mean fit seconds, classes)`` of the offline benchmark."""
    try:
        groups = json.loads(BENCH_RESULTS.read_text())["groups"]
    except (OSError, ValueError, KeyError):
        return {}
    out = {}
    for g in groups:
        seconds = g.get("metrics", {}).get("fit_seconds", {}).get("mean")
        if seconds is not None:
            classes = 5 if g["protocol"] == "base-to-new" else 10
            out[(g["method"], g["protocol"], int(g["shots"]))] = (float(seconds), classes)
    return out


def fit_seconds(method: str, options: dict[str, Any], protocol: str, shots: int,
                classes: int) -> float | None:
    """Benchmark fit seconds at the nearest benchmarked shots, scaled to ``classes``
    (squared for dense Kalman / Laplace); None when the method was not benchmarked."""
    bench = _bench_seconds()
    rows = {s: v for (m, p, s), v in bench.items() if m == method and p == protocol}
    if not rows:
        return None
    nearest = min(rows, key=lambda s: (abs(math.log(s / shots)), s))
    seconds, ref = rows[nearest]
    quadratic = (method == "kalman" and options.get("covariance", "full") == "full") or (
        method == "laplace")
    ratio = classes / ref
    return seconds * shots / nearest * ratio ** (2 if quadratic else 1)


def default_memory_gib(device: str) -> float:
    """Declared memory when a suite names none: the host's RAM on ``cpu``, else an 80 GB GPU."""
    if device == "cpu":
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB
    return DEFAULT_GPU_GIB


@dataclass(frozen=True)
class RunEstimate:
    """One (data set, protocol, method, shots) group's estimate (seeds are alike)."""

    dataset: str
    protocol: str
    method: str
    shots: int
    runs: int
    classes: int
    peak_bytes: float
    detail: str
    seconds: float | None
    refusal: str = ""

    @property
    def label(self) -> str:
        return f"{self.dataset}/{self.protocol}/{self.method}/{self.shots}-shot"


def estimate_run(dataset: str, protocol: str, method: str, shots: int, runs: int,
                 options: dict[str, Any], backbone: str, data_root: str | None,
                 batch_size: int, precision: str) -> RunEstimate | None:
    """The estimate of one group, or None when the data set's class count is unknown."""
    from pyro_clip.methods import get_method_class

    classes = dataset_classes(dataset, data_root)
    if classes is None:
        return None
    n_test = TEST_IMAGES.get(dataset, 100 * classes)  # folder data sets: about 100 per class
    if protocol == "base-to-new":
        classes = math.ceil(classes / 2)  # fitted on the base half
        n_test = math.ceil(n_test / 2)
    options = {**get_method_class(method).default_options(), **options}
    size = backbone_size(backbone)
    own, detail, refusal = method_bytes(method, options, classes, shots, size, precision,
                                        n_test)
    peak = extraction_bytes(size, batch_size, precision) + own
    seconds = fit_seconds(method, options, protocol, shots, classes)
    return RunEstimate(dataset, protocol, method, shots, runs, classes, peak, detail,
                       None if seconds is None else seconds * runs, refusal)


def _size(n: float) -> str:
    for unit, scale in (("TiB", 2**40), ("GiB", GIB), ("MiB", 2**20)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n / 1024:.0f} KiB"


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def format_estimates(estimates: list[RunEstimate], memory_gib: float) -> list[str]:
    """One line per (data set, protocol): each method's peak memory; then the time total."""
    lines = [f"memory estimate per run (rough; declared device memory {memory_gib:g} GiB):"]
    by_set: dict[tuple[str, str], dict[str, float]] = {}
    for e in estimates:
        peaks = by_set.setdefault((e.dataset, e.protocol), {})
        peaks[e.method] = max(peaks.get(e.method, 0.0), e.peak_bytes)
    for (dataset, protocol), peaks in by_set.items():
        classes = next(e.classes for e in estimates if (e.dataset, e.protocol) ==
                       (dataset, protocol))
        lines.append(f"  {dataset}/{protocol} ({classes} training classes): " + ", ".join(
            f"{m} {_size(b)}" for m, b in peaks.items()))
    timed = [e.seconds for e in estimates if e.seconds is not None]
    untimed = sorted({e.method for e in estimates if e.seconds is None})
    if timed:
        lines.append(f"fit time, very rough (offline CPU benchmark scaled by classes): about "
                     f"{_duration(sum(timed))} in all"
                     + (f"; not benchmarked: {', '.join(untimed)}" if untimed else ""))
    return lines


def too_large(estimates: list[RunEstimate], memory_gib: float) -> list[str]:
    """A line per (data set, protocol, method) that cannot run at some shots: refused by the
    method or estimated above the device memory (the largest shots' numbers shown)."""
    worst: dict[str, tuple[RunEstimate, list[int]]] = {}
    for e in estimates:
        if e.refusal or e.peak_bytes > memory_gib * GIB:
            key = f"{e.dataset}/{e.protocol}/{e.method}"
            prev, shots = worst.get(key, (e, []))
            worst[key] = (e if e.peak_bytes >= prev.peak_bytes else prev, [*shots, e.shots])
    lines = []
    for key, (e, shots) in worst.items():
        why = e.refusal or (f"needs about {_size(e.peak_bytes)} ({e.detail}) > "
                            f"device_memory_gib={memory_gib:g}")
        lines.append(f"{key} at shots {', '.join(map(str, sorted(shots)))}: {why}")
    return lines
