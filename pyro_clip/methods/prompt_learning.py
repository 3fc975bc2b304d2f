"""Prompt-learning methods: CoOp and CoCoOp, each with a softmax or an OVE-PG likelihood.

``coop`` / ``cocoop`` train with softmax cross-entropy (the baselines); ``coop-ove-pg`` /
``cocoop-ove-pg`` with the OVE-PG objective of Kim et al. (arXiv 2504.14123, eq. 10, see
:mod:`pyro_clip.models.ove_pg`). The switch is the ``likelihood`` option, so
``coop --opt likelihood=ove-pg`` equals ``coop-ove-pg``. Prediction is ``softmax(f)`` of the
learned logits (paper: argmax of f) for any class names, seen or not. OVE-PG learners
predict with the posterior predictive of the paper's Gaussian posterior over logits
``q(f | x) = N(f, alpha^-1 I)``: draws ``f_s`` from ``pyro.infer.Predictive`` are the
``logit_samples`` and ``p = 1/S sum_s softmax(f_s)`` (so probabilities and PPC replicates come
from one distribution; the conditional Gaussian over psi needs the label, so it stays a
training device).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from pyro_clip.diagnostics.metrics import accuracy, negative_log_likelihood
from pyro_clip.errors import ConfigError
from pyro_clip.features.cache import FeatureSet
from pyro_clip.features.views import ViewSampler, training_views
from pyro_clip.inference.predictive import mc_probs
from pyro_clip.methods.base import Method, Prediction, register_method
from pyro_clip.methods.options import Option, augment_options, train_options, with_defaults
from pyro_clip.models.ove_pg import (
    PREDICTIVE_DRAWS,
    OvePGConfig,
    ove_pg_loss,
    ove_pg_posterior,
    ove_pg_posterior_predictive,
)
from pyro_clip.prompts.cocoop import CoCoOpPromptLearner
from pyro_clip.prompts.coop import CoOpPromptLearner
from pyro_clip.training.loop import TrainSettings, checkpoint_identity, train
from pyro_clip.training.pseudo_new import SCORES, select_pseudo_new

LIKELIHOODS = ("softmax", "ove-pg")
SELECTS = ("fixed", "pseudo-new")


class PromptLearningMethod(Method):
    """Shared fit/predict; subclasses choose the learner and the default likelihood."""

    #: select=pseudo-new grid per likelihood (options -> values), overridable by select_grid
    select_axes: ClassVar[dict[str, dict[str, list[Any]]]] = {
        "ove-pg": {"lam": [0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0], "alpha": [0.1, 1.0, 10.0]},
    }
    #: options whose larger values pull harder towards the zero-shot prior (tie-break of select)
    prior_options: ClassVar[tuple[str, ...]] = ("lam",)

    # Training settings chosen on the embedded data's *validation* split with the offline
    # ConSE backbone (docs/ove_pg.md); the paper's SGD lr 1e-4 barely moves MiniLM prompts.
    # CoOp, CoCoOp, KgCoOp and MaPLe all train with random resized crop + flip: on.
    OPTIONS: ClassVar[dict[str, Option]] = {
        "n_ctx": Option(4, "learned context tokens", int, low=1),
        "ctx_init": Option("a photo of a", "words the context starts from ('' = random "
                           "N(0, 0.02^2))", str),
        "likelihood": Option("softmax", "training objective: softmax cross-entropy or OVE-PG",
                             choices=LIKELIHOODS),
        "alpha": Option(1.0, "OVE-PG prior precision alpha of the logits", float, low=0,
                        low_open=True),
        "lam": Option(0.2, "OVE-PG KL weight lambda towards the zero-shot logits", float,
                      low=0),
        "num_samples": Option(1, "OVE-PG Polya-Gamma draws M per step", int, low=1),
        "omega": Option("sample", "OVE-PG omega: Polya-Gamma draws or their mean",
                        choices=("sample", "mean")),
        **train_options(epochs=10, batch_size=16, lr=1e-2, weight_decay=0.0,
                        optimizer="adamw"),
        **augment_options(n_views=8),
        "select": Option("fixed", "keep the options, or choose them on pseudo-new folds of "
                         "the training classes", choices=SELECTS),
        "select_grid": Option(None, "select=pseudo-new: options -> candidate values (null: "
                              "the method's grid)", dict, (None,)),
        "select_folds": Option(2, "select=pseudo-new: folds of the training classes", int,
                               low=1, high=2),
        "select_score": Option("accuracy", "select=pseudo-new: score on the pseudo-new "
                               "classes", choices=SCORES),
    }

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        o = self.options
        if o["select"] == "pseudo-new":
            axes = self.selection_axes()
            if not axes:
                raise ConfigError(f"{self.name}: select=pseudo-new has nothing to tune with "
                                  f"likelihood={o['likelihood']}; give select_grid, e.g. "
                                  "select_grid={lam: [0.2, 1]} with likelihood=ove-pg")
            bad = set(axes) - set(self.default_options())
            if bad:
                raise ConfigError(f"select_grid names unknown option(s) {sorted(bad)}")
            for key, values in axes.items():  # each candidate: the option's type and range
                for value in values:
                    self.OPTIONS[key].check(key, value, f"{self.name} select_grid")
        self.ove = self._ove_config(o)
        self._train_settings(o, seed=1)  # bad optimiser options fail at construction
        self.learner: CoOpPromptLearner | None = None
        self.history: list[float] = []

    @staticmethod
    def _train_settings(o: dict[str, Any], seed: int) -> TrainSettings:
        return TrainSettings(epochs=o["epochs"], batch_size=o["batch_size"], lr=o["lr"],
                             optimizer=o["optimizer"], weight_decay=o["weight_decay"],
                             seed=seed).validate()

    @staticmethod
    def _ove_config(o: dict[str, Any]) -> OvePGConfig:
        return OvePGConfig(o["alpha"], o["lam"], o["num_samples"], o["omega"]).validate()

    def selection_axes(self) -> dict[str, list[Any]]:
        """Options and values that select=pseudo-new searches (``select_grid`` or the default)."""
        grid = self.options["select_grid"]
        if grid is not None:
            if not isinstance(grid, dict) or not grid:
                raise ConfigError(f"select_grid must be a mapping option -> list of values, "
                                  f"got {grid!r}")
            return {k: list(v) if isinstance(v, (list, tuple)) else [v] for k, v in grid.items()}
        return dict(self.select_axes.get(self.options["likelihood"], {}))

    def make_learner(self, classnames: Sequence[str]) -> CoOpPromptLearner:
        raise NotImplementedError

    def train_views(self) -> tuple[str, int] | None:
        """``(augment, n_views)`` the runner must encode for the training images, or None."""
        o = self.options
        return None if o["augment"] == "none" else (o["augment"], o["n_views"])

    def _views(self, data: FeatureSet) -> torch.Tensor:
        """(V, N, D) training features: the augmented views, or the plain features (V = 1)."""
        o = self.options
        return training_views(data.features, self.feature_kind, o["augment"], o["n_views"],
                              self.name)

    def loss(self, learner: CoOpPromptLearner, x: torch.Tensor, f0: torch.Tensor,
             y: torch.Tensor, names: Sequence[str], options: dict[str, Any],
             rng: np.random.Generator) -> torch.Tensor:
        """Softmax cross-entropy, or the OVE-PG objective (Kim et al. eq. 10)."""
        f = learner.logits(x, names)
        if options["likelihood"] == "softmax":
            return F.cross_entropy(f, y)
        return ove_pg_loss(f, f0, y, self._ove_config(options), rng)

    def _train(self, data: FeatureSet, options: dict[str, Any], checkpoint=None,
               progress: bool = False) -> tuple[CoOpPromptLearner, list[float]]:
        """One training run of a fresh learner on ``data`` with ``options``."""
        learner = self.make_learner(data.classnames)
        y, names = data.labels, data.classnames
        batch = self._batch_source(data, options)
        rng = np.random.default_rng(self.ctx.seed)  # Pólya-Gamma draws (one host trip a step)

        def loss_fn(idx: torch.Tensor) -> torch.Tensor:
            x, f0 = batch(idx)
            return self.loss(learner, x, f0, y[idx].to(f0.device), names, options, rng)

        settings = self._train_settings(options, self.ctx.seed)
        with torch.random.fork_rng():  # psi's reparameterised noise: seeded, global RNG kept
            torch.manual_seed(self.ctx.seed)
            history = train(
                learner, loss_fn, len(y), settings, checkpoint=checkpoint, progress=progress,
                desc=self.name, rngs={"polya_gamma": rng, **batch.rngs},
                identity=checkpoint_identity(
                    self.name, options, self.ctx.backbone.fingerprint(),
                    *self._data_tensors(data), templates=self.ctx.templates),
            )
        return learner, history

    def _data_tensors(self, data: FeatureSet) -> tuple[torch.Tensor, ...]:
        """What fingerprints the training data in a resumable checkpoint (features, labels)."""
        x = data.features[self.feature_kind]
        return (x, data.labels) if isinstance(x, torch.Tensor) else (data.labels,)

    def _batch_source(self, data: FeatureSet, options: dict[str, Any]):
        """``batch(idx) -> (inputs, f0)``: one random cached view per image (once per epoch,
        since each image is drawn once per epoch) and its frozen zero-shot logits."""
        xv = self._views(data)
        f0v = torch.stack([self.ctx.zero_shot_logits(x, data.classnames).float() for x in xv])
        sampler = ViewSampler(xv, self.ctx.seed)

        def batch(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            v = sampler.draw(idx).to(xv.device)
            return xv[v, idx], f0v[v, idx]

        batch.rngs = {"views": sampler.generator}  # checkpointed: a resumed run draws the same
        return batch

    def _logits(self, learner, features, classnames: Sequence[str]) -> torch.Tensor:
        """(N, K) learned logits; class prompts encoded once per call (CoOp) or in memory-sized
        chunks (CoCoOp's are image-conditional)."""
        return learner.predict_logits(features, classnames)

    def fit(self, train_set: FeatureSet, val: FeatureSet) -> None:
        """Minimise the loss over the prompt parameters only (after select=pseudo-new, if set)."""
        if self.options["select"] == "pseudo-new":
            self._select(train_set, val)
        ckpt = self.ctx.work_dir / "train_state.pt" if self.ctx.work_dir else None
        self.learner, self.history = self._train(train_set, self.options, ckpt,
                                                 self.ctx.progress)
        if len(val):
            with torch.no_grad():
                pred = self.predict(val.features[self.feature_kind], val.classnames).probs
            self.selected["val_accuracy"] = float((pred.argmax(1) == val.labels).float().mean())

    def _select(self, train_set: FeatureSet, val: FeatureSet) -> None:
        """Pseudo-base / pseudo-new folds of the training classes (training.pseudo_new)."""
        kind = self.feature_kind

        def fit_score(cand, data: FeatureSet):
            learner, _ = self._train(data, {**self.options, **cand})

            @torch.no_grad()
            def evaluate(eval_set: FeatureSet) -> tuple[float, float]:
                logits = self._logits(learner, eval_set.features[kind], eval_set.classnames)
                probs = logits.softmax(-1)  # the probabilities predict() reports
                labels = eval_set.labels.to(probs.device)
                return accuracy(probs, labels), negative_log_likelihood(probs, labels)

            return evaluate

        def prior_strength(cand) -> tuple[float, ...]:
            """Ties go to the stronger pull towards the zero-shot prior (``prior_options``)."""
            return tuple(float(cand.get(k, self.options[k])) for k in self.prior_options)

        result = select_pseudo_new(self.selection_axes(), fit_score, train_set, val,
                                   self.options["select_folds"], self.options["select_score"],
                                   prior_strength)
        self.options.update(result["best"])
        self.ove = self._ove_config(self.options)
        self.selected["pseudo_new"] = result

    @torch.no_grad()
    def predict(self, features: torch.Tensor, classnames: Sequence[str]) -> Prediction:
        if self.learner is None:
            raise RuntimeError(f"{self.name}: fit or load_state_dict before predict")
        logits = self._logits(self.learner, features, classnames)
        if self.options["likelihood"] != "ove-pg":
            return Prediction(logits.softmax(-1))
        # OVE-PG: posterior draws f ~ N(f, alpha^-1 I) via pyro.infer.Predictive (models.ove_pg);
        # the probabilities are their posterior predictive, 1/S sum_s softmax(f_s)
        f0 = self._prior_logits(features, classnames).to(logits.dtype)
        draws = ove_pg_posterior_predictive(logits, f0, self.ove, PREDICTIVE_DRAWS, self.ctx.seed)
        return Prediction(mc_probs(draws["f"]).to(logits.dtype), draws["f"])

    def _prior_logits(self, features, classnames: Sequence[str]) -> torch.Tensor:
        """Frozen zero-shot logits f0 of ``features`` (MaPLe overrides: it holds pixels)."""
        return self.ctx.zero_shot_logits(features, classnames).float()

    @torch.no_grad()
    def logit_prior(self, features, classnames: Sequence[str]):
        """OVE-PG: ``p(f | x) = N(f0(x), alpha^-1 I)`` around the zero-shot logits."""
        if self.options["likelihood"] != "ove-pg":
            return None
        return ove_pg_posterior(self._prior_logits(features, classnames), self.ove)

    def state_dict(self) -> dict[str, Any]:
        assert self.learner is not None
        return {"learner": self.learner.state_dict(), "classnames": self.learner.class_names,
                "history": self.history}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.learner = self.make_learner(state["classnames"])
        self.learner.load_state_dict(state["learner"])
        self.history = list(state.get("history", []))


@register_method
class CoOp(PromptLearningMethod):
    """CoOp: shared (or class-specific, ``class_specific=True``) learnable context."""

    name = "coop"
    demo_options: ClassVar[dict[str, Any] | None] = {"epochs": 5}

    OPTIONS: ClassVar[dict[str, Option]] = {
        **PromptLearningMethod.OPTIONS,
        "class_specific": Option(False, "one context per class instead of one shared", bool),
    }

    def make_learner(self, classnames: Sequence[str]) -> CoOpPromptLearner:
        o = self.options
        return CoOpPromptLearner(
            self.ctx.backbone, o["n_ctx"], o["ctx_init"], o["class_specific"], classnames,
            seed=self.ctx.seed, fallback=self.ctx.text_classifier,
        )


@register_method
class CoOpOvePG(CoOp):
    """CoOp trained with the OVE-PG objective (lambda = 0.2)."""

    name = "coop-ove-pg"
    OPTIONS: ClassVar[dict[str, Option]] = with_defaults(CoOp.OPTIONS, likelihood="ove-pg")


@register_method
class CoCoOp(PromptLearningMethod):
    """CoCoOp: context shifted per image by a meta-net on the cached image features."""

    name = "cocoop"
    demo_options: ClassVar[dict[str, Any] | None] = {"epochs": 1, "batch_size": 8}
    OPTIONS: ClassVar[dict[str, Option]] = with_defaults(PromptLearningMethod.OPTIONS,
                                                         lam=0.1, batch_size=4)

    def make_learner(self, classnames: Sequence[str]) -> CoCoOpPromptLearner:
        o = self.options
        return CoCoOpPromptLearner(self.ctx.backbone, o["n_ctx"], o["ctx_init"],
                                   seed=self.ctx.seed)


@register_method
class CoCoOpOvePG(CoCoOp):
    """CoCoOp trained with the OVE-PG objective (lambda = 0.1)."""

    name = "cocoop-ove-pg"
    OPTIONS: ClassVar[dict[str, Option]] = with_defaults(CoCoOp.OPTIONS, likelihood="ove-pg")
