"""``fit``: one method on features, the CLI's ``pyro-clip fit`` minus the files; and
:class:`FittedModel`, what ``fit`` and ``load_run`` return."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from pyro_clip.api.loading import dataset_name, empty_like
from pyro_clip.api.text_encoder import CLIP_LOGIT_SCALE, ClassTextEncoder
from pyro_clip.backbones.base import DualEncoder
from pyro_clip.data.pixels import PixelRows
from pyro_clip.data.registry import default_templates
from pyro_clip.diagnostics.ood import prediction_scores
from pyro_clip.errors import ConfigError, DataError
from pyro_clip.features.cache import FeatureCache
from pyro_clip.features.views import encode_views
from pyro_clip.methods import Method, MethodContext, Prediction, create_method, get_method_class
from pyro_clip.methods.base import DEFAULT_TEMPLATES
from pyro_clip.methods.prompt_learning import PromptLearningMethod
from pyro_clip.pipeline.config import RunConfig
from pyro_clip.runtime import Runtime
from pyro_clip.types import FeatureSet
from pyro_clip.utils.seeding import seed_everything

Encoder = DualEncoder | ClassTextEncoder


class FittedModel:
    """A fitted method with what it needs to predict: the backbone (or the class-text
    encoder) and the training classes. Returned by :func:`pyro_clip.fit` and
    :func:`pyro_clip.load_run`.

    Besides :meth:`predict`, :meth:`posterior` and :meth:`ood_scores` it forwards the
    method's own extra capabilities when the method has them (explicit delegation: the
    method object itself is ``model.method``): :meth:`update` (add labelled examples to the
    posterior) and :meth:`acquisition` (score an unlabelled pool); a method without them
    raises a ConfigError saying so.

    >>> import torch, pyro_clip as pc
    >>> x, y = torch.randn(20, 8), torch.arange(4).repeat(5)
    >>> model = pc.fit("linear-probe", pc.Features(x, y, list("abcd"), text=torch.randn(4, 8)),
    ...                lam=1.0)
    >>> model.name, model.classnames, model.predict(x).shape
    ('linear-probe', ['a', 'b', 'c', 'd'], torch.Size([20, 4]))
    """

    def __init__(self, method: Method, encoder: Encoder, classnames: Sequence[str],
                 train: FeatureSet | None = None, config: Mapping[str, Any] | None = None) -> None:
        self.method = method
        self.encoder = encoder
        self.classnames = list(classnames)
        #: the training features (``fit``), for ``evaluate``'s training-data diagnostics
        self.train = train
        #: the run's ``config.json`` (``load_run``) or the settings ``fit`` used
        self.config = dict(config or {})

    def __repr__(self) -> str:
        return (f"FittedModel({self.name!r}, classes={len(self.classnames)}, "
                f"backbone={getattr(self.encoder, 'name', '?')!r})")

    @property
    def name(self) -> str:
        """The method's name (``pyro-clip list methods``)."""
        return self.method.name

    @property
    def options(self) -> dict[str, Any]:
        """Every option of the method, defaults filled in."""
        return dict(self.method.options)

    @property
    def selected(self) -> dict[str, Any]:
        """Hyper-parameters chosen during fitting (on validation data)."""
        return dict(self.method.selected)

    # ----- inputs ------------------------------------------------------------------------
    def method_inputs(self, data: FeatureSet) -> FeatureSet:
        """``data`` with the feature kind the method consumes: the cached features, or for
        methods that run the image encoder (MaPLe) the lazily decoded images."""
        kind = self.method.feature_kind
        if kind in data.features:
            return data
        if kind == "pixels" and data.images is not None and isinstance(self.encoder, DualEncoder):
            return FeatureSet({"pixels": PixelRows(data.images, self.encoder.preprocess)},
                              data.labels, data.classnames, data.name, data.text, data.images)
        raise DataError(f"method {self.name!r} reads {kind!r} inputs, which these features "
                        f"do not hold ({sorted(data.features)}); use pyro_clip.encode on "
                        "images from pyro_clip.load_dataset")

    def _inputs(self, data: FeatureSet | torch.Tensor,
                classnames: Sequence[str] | None) -> tuple[Any, list[str]]:
        if isinstance(data, FeatureSet):
            self._register_text(data)
            names = list(classnames) if classnames is not None else data.classnames
            return self.method_inputs(data).features[self.method.feature_kind], names
        if not isinstance(data, torch.Tensor) or data.ndim != 2:
            raise DataError("predict takes pyro_clip.Features or an (N, D) tensor of features, "
                            f"got {type(data).__name__}")
        return data, list(classnames) if classnames is not None else self.classnames

    # ----- prediction --------------------------------------------------------------------
    def predictive(self, data: FeatureSet | torch.Tensor,
                   classnames: Sequence[str] | None = None) -> Prediction:
        """``Prediction``: ``probs`` (N, C) and, for Bayesian methods, ``logit_samples``
        (S, N, C) (the first draws only, on sets too large to keep all), the
        ``mutual_information`` (N,) and the PPC ``replicates`` (S, N). Classes:
        ``classnames``, else those of ``data`` (Features), else the training classes; classes
        never trained on get the zero-shot prior."""
        x, names = self._inputs(data, classnames)
        with torch.no_grad():
            return self.method.predict(x, names)

    def predict(self, data: FeatureSet | torch.Tensor,
                classnames: Sequence[str] | None = None) -> torch.Tensor:
        """Predictive probabilities (N, C), rows summing to 1 (see :meth:`predictive`)."""
        return self.predictive(data, classnames).probs

    def posterior(self, **kwargs: Any) -> torch.distributions.Distribution:
        """The posterior over the method's weights as a torch/Pyro distribution, in the
        original feature space (``kalman``: rows ``[w_c, b_c]`` of ``z = W x + b`` on the
        normalised features; ``laplace``: ``W`` of ``z = W x``), with ``.mean``,
        ``.variance``, ``.sample()`` and ``.log_prob()``. Point estimates raise."""
        fn = getattr(self.method, "posterior", None)
        post = fn(**kwargs) if callable(fn) else None
        if post is None:
            raise ConfigError(f"method {self.name!r} is a point estimate and has no posterior; "
                              "the Bayesian methods are kalman and laplace")
        return post

    def logit_posterior(self, data: FeatureSet | torch.Tensor,
                        classnames: Sequence[str] | None = None):
        """Posterior (predictive) distribution of the logits, batch (N,), event (C,); None
        for point estimates."""
        x, names = self._inputs(data, classnames)
        return self.method.logit_posterior(x, names)

    def ood_scores(self, data: FeatureSet | torch.Tensor,
                   classnames: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """Out-of-distribution scores, one (N,) tensor each, higher = more OOD, named as in a
        run's report: the prediction's ``msp``, ``entropy`` and (with posterior draws)
        ``mutual_information``, plus the method's own as ``<method>:<name>`` (e.g.
        ``kalman:mahalanobis``)."""
        pred = self.predictive(data, classnames)
        x, names = self._inputs(data, classnames)
        scores = prediction_scores(pred.probs, pred.logit_samples,
                                   getattr(pred, "mutual_information", None))
        fn = getattr(self.method, "ood_scores", None)
        if callable(fn):
            scores.update({f"{self.name}:{k}": v for k, v in fn(x, names).items()})
        return scores

    # ----- the method's extra capabilities (explicit delegation) -------------------------
    def _capability(self, name: str):
        fn = getattr(self.method, name, None)
        if not callable(fn):
            raise ConfigError(f"method {self.name!r} has no {name}(); it is offered by "
                              "methods that support it (e.g. kalman)")
        return fn

    def update(self, features: FeatureSet, **kwargs: Any) -> Any:
        """Condition the fitted posterior on more labelled ``features`` without refitting
        (the method's ``update``, e.g. one more Kalman filtering pass; classes never seen join
        with their zero-shot prior). Returns the method's record of the update."""
        fn = self._capability("update")
        self._register_text(features)
        record = fn(self.method_inputs(features), **kwargs)
        self.classnames = list(getattr(self.method, "train_classnames", self.classnames))
        self.train = _concat(self.train, features)
        return record

    def acquisition(self, pool: FeatureSet | torch.Tensor, score: str | None = None,
                    **kwargs: Any) -> torch.Tensor:
        """One acquisition score per unlabelled image of ``pool`` (the method's
        ``acquisition``; higher = label it first), e.g. ``score="entropy" | "bald" |
        "variance"`` for kalman. ``pool``: Features or an (N, D) tensor."""
        fn = self._capability("acquisition")
        x, _ = self._inputs(pool, None)
        if score is not None:
            kwargs["score"] = score
        return fn(x, **kwargs)

    def _register_text(self, data: FeatureSet) -> None:
        if isinstance(self.encoder, ClassTextEncoder) and data.text is not None:
            self.encoder.add(data.classnames, data.text)


def _concat(a: FeatureSet | None, b: FeatureSet) -> FeatureSet | None:
    """Rows of ``a`` then ``b`` when both hold the same classes and tensor kinds, else None
    (the training set is then unknown to :func:`pyro_clip.evaluate`)."""
    if a is None or a.classnames != b.classnames or set(a.features) != set(b.features) or not all(
            isinstance(v, torch.Tensor) for v in (*a.features.values(), *b.features.values())):
        return None
    return FeatureSet({k: torch.cat([a.features[k], b.features[k]]) for k in a.features},
                      torch.cat([a.labels, b.labels]), a.classnames, a.name, a.text)


def needs_backbone(method: str) -> bool:
    """Whether ``method`` learns through the backbone's towers (the prompt learners)."""
    return issubclass(get_method_class(method), PromptLearningMethod)


def _encoder(method: str, train: FeatureSet, backbone: DualEncoder | None,
             logit_scale: float | None) -> Encoder:
    if backbone is not None:
        if logit_scale is not None:
            raise ConfigError("logit_scale is the backbone's own; pass it only without a "
                              "backbone (with Features.text)")
        return backbone
    if needs_backbone(method):
        raise ConfigError(f"method {method!r} learns prompts through the backbone's text "
                          "encoder and needs a backbone: pass backbone=pyro_clip.load_backbone"
                          "(...) (kalman, laplace, linear-probe, tip-adapter(-f), clip-adapter "
                          "and zero-shot also fit from Features.text alone)")
    if train.text is None:
        raise ConfigError("fit needs backbone=pyro_clip.load_backbone(...) or Features with "
                          "text=<(C, D) class embeddings> for the zero-shot prior")
    return ClassTextEncoder(train.classnames, train.text,
                            CLIP_LOGIT_SCALE if logit_scale is None else logit_scale)


def _options(method: str, options: Mapping[str, Any], dataset: str | None,
             has_images: bool) -> dict[str, Any]:
    """The CLI's option path: the data set's defaults (``RunConfig.resolved``) when the
    features come from a known data set; without images, no augmented views."""
    opts = {str(k).replace("-", "_"): v for k, v in options.items()}  # as parse_option
    cls = get_method_class(method)  # unknown method: the list of known ones
    if "augment" in cls.default_options() and "augment" not in opts and not has_images:
        opts["augment"] = "none"
    if dataset is not None:
        opts = RunConfig(method=method, dataset=dataset, options=opts).resolved().options
    return opts


def fit(method: str, train: FeatureSet, val: FeatureSet | None = None, *,
        backbone: DualEncoder | None = None, seed: int = 1,
        templates: Sequence[str] | None = None, logit_scale: float | None = None,
        progress: bool = False, cache_dir: str | None = None,
        options: Mapping[str, Any] | None = None, **kwargs: Any) -> FittedModel:
    """Fit ``method`` (``pyro-clip list methods``) on ``train`` -> :class:`FittedModel`.

    ``kwargs`` are the method's options, named as ``pyro-clip fit --opt key=value`` names them
    (``covariance="block"``); they go through the same validation, so an unknown one fails
    listing the valid ones (``options={...}`` takes them as a mapping too). Hyper-parameters
    are chosen on ``val`` only; ``val=None`` means no validation data: methods that search
    a grid then raise naming the option to fix, except ``kalman``, which keeps the first
    ``prior_var_grid`` value.

    ``backbone`` gives the zero-shot prior (text embeddings of ``templates``, default the data
    set's standard ones). Without it, ``train.text`` (C, D) class embeddings do, with
    ``logit_scale`` (default 100, CLIP's); then only weight-space methods fit (kalman,
    laplace, linear-probe, tip-adapter, tip-adapter-f, clip-adapter, zero-shot).
    Features from :func:`pyro_clip.encode` keep their images, so methods that train on
    augmented views (``augment=``, the data set's default) encode them once, cached;
    features from tensors use ``augment="none"``.

    >>> import torch, pyro_clip as pc
    >>> x, y = torch.randn(40, 8, dtype=torch.float64), torch.arange(4).repeat(10)
    >>> feats = pc.Features(x, y, ["a", "b", "c", "d"], text=torch.randn(4, 8))
    >>> model = pc.fit("kalman", feats, covariance="diag", seed=1)
    >>> model.predict(x).sum(1).allclose(torch.ones(40))
    True
    >>> pc.fit("kalman", feats, covarianse="diag")
    Traceback (most recent call last):
    ...
    pyro_clip.errors.ConfigError: method 'kalman' has no option(s) ['covarianse']; ...
    """
    if not isinstance(train, FeatureSet):
        raise DataError(f"fit takes pyro_clip.Features as train, got {type(train).__name__}; "
                        "build them with pyro_clip.encode or pyro_clip.Features(x, y, classnames)")
    if val is not None and not isinstance(val, FeatureSet):
        raise DataError(f"val must be pyro_clip.Features or None, got {type(val).__name__}")
    encoder = _encoder(method, train, backbone, logit_scale)
    dataset = dataset_name(train.images)
    opts = _options(method, {**(options or {}), **kwargs}, dataset, train.images is not None)
    m = create_method(method, **opts)  # bad option names and values: before any work
    if templates is None:
        templates = default_templates(dataset) if dataset is not None else DEFAULT_TEMPLATES
    runtime = backbone.runtime if backbone is not None else Runtime()
    seed_everything(seed)
    m.setup(MethodContext(encoder, list(templates), seed, None, progress, runtime))
    model = FittedModel(m, encoder, train.classnames, train,
                        {"method": method, "options": dict(m.options), "seed": seed,
                         "templates": list(templates), "dataset": dataset,
                         "backbone": getattr(encoder, "name", None)})
    train_m = base = model.method_inputs(train)
    views = m.train_views() if hasattr(m, "train_views") else None
    if views:
        if train.images is None or backbone is None:
            raise ConfigError(f"{method}: augment={views[0]!r} encodes augmented views of the "
                              "training images, which these features do not carry; pass "
                              "augment='none' or features from pyro_clip.encode with a backbone")
        extra = encode_views(backbone, train.images, views[0], views[1], seed,
                             FeatureCache(cache_dir), progress=progress)
        train_m = FeatureSet({**train_m.features, **extra}, train_m.labels, train_m.classnames,
                             train_m.name, train_m.text, train_m.images)
    val_m = model.method_inputs(val) if val is not None else empty_like(base)
    if isinstance(encoder, ClassTextEncoder) and val is not None and val.text is not None:
        encoder.add(val.classnames, val.text)
    m.fit(train_m, val_m)
    return model
