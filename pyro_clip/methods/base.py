"""The interface every adaptation method implements, and the method registry.

Life cycle (cf. laplace-torch's single ``fit`` / predictive API):
``m = create_method(name, **options)``; ``m.setup(context)``; ``m.fit(train, val)``;
``m.predict(features, classnames)``. Methods must predict for *any* class names: text-based
methods (prompt learners) embed them; methods with per-class weights fall back to the
zero-shot classifier for classes they never saw (base-to-new protocol).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from pyro_clip.backbones.base import DualEncoder, cosine_logits
from pyro_clip.errors import ConfigError, DataError
from pyro_clip.features.cache import FeatureSet
from pyro_clip.methods.options import Option, check_options
from pyro_clip.runtime import CPU, Runtime
from pyro_clip.utils.plugins import import_plugins

DEFAULT_TEMPLATES = ("a photo of a {}.",)


@dataclass
class MethodContext:
    """What a method may use besides the data: the frozen backbone, prompts, seed, work dir,
    and the :class:`~pyro_clip.runtime.Runtime` (device, precision) to compute on."""

    backbone: DualEncoder
    templates: Sequence[str] = DEFAULT_TEMPLATES
    seed: int = 1
    work_dir: Path | None = None
    progress: bool = True
    #: device and precision every component follows (one home: pyro_clip.runtime)
    runtime: Runtime = CPU
    _text_cache: dict[tuple[str, ...], torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def device(self) -> torch.device:
        return self.runtime.device

    def text_classifier(self, classnames: Sequence[str]) -> torch.Tensor:
        """Zero-shot class weights (C, D), normalised, on the device, cached per class list
        (every class prompt is encoded once, in batches: :meth:`DualEncoder.zero_shot_weights`)."""
        key = tuple(classnames)
        if key not in self._text_cache:
            weights = self.backbone.zero_shot_weights(classnames, self.templates)
            self._text_cache[key] = weights.to(self.device)
        return self._text_cache[key]

    def zero_shot_logits(self, image_features: torch.Tensor, classnames: Sequence[str]):
        """Frozen pre-trained logits ``s * cos(x, w_c)``: the prior mean of the Bayesian methods."""
        weights = self.text_classifier(classnames)
        x = image_features.to(weights.device, weights.dtype)
        return cosine_logits(x, weights, self.backbone.logit_scale)


@dataclass
class Prediction:
    """``probs`` (N, C) predictive probabilities; when Bayesian, ``logit_samples`` (S, N, C)
    (methods that reduce their draws in chunks keep only the first draws that fit
    :data:`~pyro_clip.inference.predictive.KEPT_SAMPLES_BYTES`, possibly none) and, from all
    draws, ``mutual_information`` (N,) and the PPC ``replicates`` (S, N)."""

    probs: torch.Tensor
    logit_samples: torch.Tensor | None = None
    mutual_information: torch.Tensor | None = None
    replicates: torch.Tensor | None = None


def to_device(obj: Any, device: torch.device | str) -> Any:
    """``obj`` with every tensor in it (FeatureSet, Prediction, dicts, lists) on ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, FeatureSet):
        return dataclasses.replace(obj, features=to_device(obj.features, device),
                                   labels=obj.labels.to(device))
    if isinstance(obj, Prediction):
        return dataclasses.replace(obj, **{f.name: to_device(getattr(obj, f.name), device)
                                           for f in dataclasses.fields(obj)})
    if isinstance(obj, dict):
        return type(obj)((k, to_device(v, device)) for k, v in obj.items())
    if isinstance(obj, list | tuple):
        return type(obj)(to_device(v, device) for v in obj)
    return obj


#: entry points run on the context's device: tensors in on the device, tensors out on the CPU
#: (the logit distributions stay where their parameters are; callers move their draws)
DEVICE_BOUNDARY = ("fit", "predict", "ood_scores", "state_dict", "load_state_dict",
                   "logit_prior")


def _on_device(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``fn`` under the method's runtime: inputs moved to ``ctx.device``, tensor factories
    defaulting to it (:meth:`Runtime.scope`), results back on the CPU. Calls nested inside
    another entry point (e.g. ``predict`` on validation data inside ``fit``) stay on device."""

    @functools.wraps(fn)
    def wrapper(self: Method, *args: Any, **kwargs: Any) -> Any:
        if self.__dict__.get("_on_device_depth", 0) or self.context is None:
            return fn(self, *args, **kwargs)
        runtime = self.context.runtime
        self._on_device_depth = 1
        try:
            with runtime.scope():
                out = fn(self, *to_device(args, runtime.device),
                         **to_device(kwargs, runtime.device))
        finally:
            self._on_device_depth = 0
        return to_device(out, "cpu")  # the output boundary: checkpoints, metrics, plots

    return wrapper


#: entry points whose image features (tensors or FeatureSets) are checked to be finite first
CHECKED_INPUTS = ("fit", "predict", "ood_scores", "logit_prior")


def check_finite_features(method: str, where: str, *inputs: Any) -> None:
    """Raise ``DataError`` naming the rows when an input's float features hold NaN or inf.

    Inputs that are neither tensors nor :class:`FeatureSet` (lazily decoded pixels, class
    names) are not features and pass."""
    for item in inputs:
        tensors = (item.features if isinstance(item, FeatureSet)
                   else {"": item} if isinstance(item, torch.Tensor) else {})
        for kind, x in tensors.items():
            if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim == 0:
                continue
            infinite = ~torch.isfinite(x)
            bad = (infinite.flatten(1).any(dim=1) if x.ndim > 1 else infinite).nonzero().flatten()
            if len(bad):
                of = f" ({item.name}, {kind})" if isinstance(item, FeatureSet) else ""
                raise DataError(
                    f"{method} {where}: features{of} contain NaN or inf in {len(bad)} of "
                    f"{x.shape[0]} rows (first: row {int(bad[0])}); re-extract them (delete the "
                    "feature cache entry) or drop those images"
                )


def _checked_inputs(fn: Callable[..., Any], where: str) -> Callable[..., Any]:
    """Check every feature input of ``fn`` with :func:`check_finite_features` first."""

    @functools.wraps(fn)
    def wrapper(self: Method, *args: Any, **kwargs: Any) -> Any:
        check_finite_features(self.name, where, *args, *kwargs.values())
        return fn(self, *args, **kwargs)

    return wrapper


class Method(ABC):
    """Base class; subclasses set ``name`` and register with :func:`register_method`.

    The entry points in :data:`DEVICE_BOUNDARY` are wrapped for every subclass so that a
    method computes on ``ctx.device`` and callers only ever see CPU tensors (the logit
    distributions of ``logit_prior`` keep the device of their parameters); those in
    :data:`CHECKED_INPUTS` refuse non-finite features with one clear error.

    Every hook a caller may use is declared here with its default, so callers call it
    directly: ``train_views``, ``ood_scores``, ``logit_prior``, ``state_dict`` /
    ``load_state_dict`` and the class attributes below.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in DEVICE_BOUNDARY:
            fn = cls.__dict__.get(name)
            if fn is not None and not getattr(fn, "__isabstractmethod__", False):
                setattr(cls, name, _on_device(fn))
        for name in CHECKED_INPUTS:
            fn = cls.__dict__.get(name)
            if fn is not None and not getattr(fn, "__isabstractmethod__", False):
                setattr(cls, name, _checked_inputs(fn, name))

    name: ClassVar[str]
    #: which cached image features the method consumes ("joint" = shared embedding space)
    feature_kind: ClassVar[str] = "joint"
    #: options for ``pyro-clip demo``; ``None`` keeps the method out of the demo
    demo_options: ClassVar[dict[str, Any] | None] = None
    #: whether the method has trained weights (a checkpoint is written)
    has_weights: ClassVar[bool] = True
    #: backbone spec prefix the method needs (``"open_clip:"``); ``""`` runs on any backbone
    requires_backbone: ClassVar[str] = ""

    #: the method's options: default, type and range, meaning (one table validates ``--opt``
    #: and feeds ``pyro-clip list options``; subclasses extend it, see methods/options.py)
    OPTIONS: ClassVar[dict[str, Option]] = {}

    def __init__(self, **options: Any) -> None:
        given = check_options(self.OPTIONS, options, self.name)  # type, range, unknown keys
        self.options: dict[str, Any] = {**self.default_options(), **given}
        self.context: MethodContext | None = None
        #: hyper-parameters chosen during fit (on validation data), recorded in config.json
        self.selected: dict[str, Any] = {}

    @classmethod
    def default_options(cls) -> dict[str, Any]:
        """Every option's default (a fresh copy: lists may be changed by the caller)."""
        return {k: copy.deepcopy(o.default) for k, o in cls.OPTIONS.items()}

    def setup(self, context: MethodContext) -> Method:
        self.context = context
        return self

    @property
    def ctx(self) -> MethodContext:
        if self.context is None:
            raise RuntimeError(f"{self.name}: call setup(context) before fit/predict")
        return self.context

    @abstractmethod
    def fit(self, train: FeatureSet, val: FeatureSet) -> None:
        """Adapt to the few-shot ``train`` set; choose hyper-parameters on ``val`` only."""

    @abstractmethod
    def predict(self, features: torch.Tensor, classnames: Sequence[str]) -> Prediction:
        """Predictive distribution for image features (N, D) over ``classnames``."""

    def train_views(self) -> tuple[str, int] | None:
        """``(augment, n_views)``: train on that many augmented views of each training image
        (encoded by the pipeline); ``None`` (the default): the cached, un-augmented features."""
        return None

    def ood_scores(self, features: torch.Tensor, classnames: Sequence[str]
                   ) -> dict[str, torch.Tensor]:
        """Method-specific out-of-distribution scores, one (N,) tensor per name, higher = more
        out-of-distribution; the diagnostics add them to the built-in ones. Default: none."""
        return {}

    def logit_prior(
        self, features: torch.Tensor, classnames: Sequence[str]
    ) -> torch.distributions.Distribution | None:
        """Prior distribution of the logits ``f(x)`` before any shot (batch (N,), event (C,));
        ``None`` when the method has no prior. Feeds ArviZ's ``prior`` group."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """Trained state for the checkpoint (tensors and plain Python)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output (after :meth:`setup`)."""


_REGISTRY: dict[str, type[Method]] = {}


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator adding ``cls`` to the registry under ``cls.name``."""
    _REGISTRY[cls.name] = cls
    return cls


def known_methods() -> list[str]:
    import_plugins("pyro_clip.methods")
    return sorted(_REGISTRY)


def get_method_class(name: str) -> type[Method]:
    import_plugins("pyro_clip.methods")
    if name not in _REGISTRY:
        raise ConfigError(f"unknown method {name!r}; known methods: {', '.join(known_methods())}")
    return _REGISTRY[name]


def create_method(name: str, **options: Any) -> Method:
    return get_method_class(name)(**options)
