"""Prompt-learning methods: CoOp and CoCoOp, each with a softmax or an OVE-PG likelihood.

``coop`` / ``cocoop`` train with softmax cross-entropy (the baselines); ``coop-ove-pg`` /
``cocoop-ove-pg`` with the OVE-PG objective of Kim et al. (arXiv 2504.14123, eq. 10, see
:mod:`pyro_clip.models.ove_pg`). The switch is the ``likelihood`` option, so
``coop --opt likelihood=ove-pg`` equals ``coop-ove-pg``. Prediction is ``softmax(f)`` of the
learned logits (paper: argmax of f) for any class names, seen or not; ``logit_samples`` is left
empty because the conditional Gaussian over psi needs the label (it is a training device).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from pyro_clip.errors import ConfigError
from pyro_clip.features import FeatureSet
from pyro_clip.methods.base import Method, Prediction, register_method
from pyro_clip.models.ove_pg import OvePGConfig, ove_differences, ove_pg_loss
from pyro_clip.models.polya_gamma import sample_pg
from pyro_clip.prompts.cocoop import CoCoOpPromptLearner
from pyro_clip.prompts.coop import CoOpPromptLearner
from pyro_clip.training import TrainSettings, checkpoint_identity, train

LIKELIHOODS = ("softmax", "ove-pg")


class PromptLearningMethod(Method):
    """Shared fit/predict; subclasses choose the learner and the default likelihood."""

    likelihood: ClassVar[str] = "softmax"
    #: paper default KL weight lambda for this learner
    default_lam: ClassVar[float] = 0.2

    @classmethod
    def default_options(cls) -> dict[str, Any]:
        # Training settings chosen on the embedded data's *validation* split with the offline
        # ConSE backbone (docs/ove_pg.md); the paper's SGD lr 1e-4 barely moves MiniLM prompts.
        return {
            "n_ctx": 4, "ctx_init": "a photo of a", "likelihood": cls.likelihood,
            "alpha": 1.0, "lam": cls.default_lam, "num_samples": 1, "omega": "sample",
            "epochs": 10, "batch_size": 16, "lr": 1e-2, "optimizer": "adamw",
            "weight_decay": 0.0,
        }

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        o = self.options
        if o["likelihood"] not in LIKELIHOODS:
            raise ConfigError(f"likelihood must be one of {LIKELIHOODS}, got {o['likelihood']!r}")
        self.ove = OvePGConfig(o["alpha"], o["lam"], o["num_samples"], o["omega"]).validate()
        self.settings = TrainSettings(
            epochs=o["epochs"], batch_size=o["batch_size"], lr=o["lr"],
            optimizer=o["optimizer"], weight_decay=o["weight_decay"],
        ).validate()
        self.learner: CoOpPromptLearner | None = None
        self.history: list[float] = []

    def make_learner(self, classnames: Sequence[str]) -> CoOpPromptLearner:
        raise NotImplementedError

    def fit(self, train_set: FeatureSet, val: FeatureSet) -> None:
        """Minimise softmax CE or the OVE-PG loss over the prompt parameters only."""
        self.learner = self.make_learner(train_set.classnames)
        x = train_set.features[self.feature_kind]
        y = train_set.labels
        names = train_set.classnames
        f0 = self.ctx.zero_shot_logits(x, names).float()  # on ctx.device, like x and y
        rng = np.random.default_rng(self.ctx.seed)
        learner, cfg = self.learner, self.ove
        # The PG tilts c = A_y f0 are fixed (frozen f0): copied to the host once per fit, so a
        # step's draw needs no device->host copy, runs on the CPU while the device computes the
        # queued prompt forward, and costs one host->device copy of omega.
        tilts = (ove_differences(f0, y).cpu()
                 if self.options["likelihood"] == "ove-pg" and cfg.omega == "sample" else None)

        def loss_fn(idx: torch.Tensor) -> torch.Tensor:
            f = learner.logits(x[idx], names)
            if self.options["likelihood"] == "softmax":
                return F.cross_entropy(f, y[idx])
            omega = None
            if tilts is not None:
                omega = sample_pg(tilts[idx.cpu()], rng).to(f.device, non_blocking=True)
            return ove_pg_loss(f, f0[idx], y[idx], cfg, rng, omega=omega)

        ckpt = self.ctx.work_dir / "train_state.pt" if self.ctx.work_dir else None
        settings = TrainSettings(**{**self.settings.__dict__, "seed": self.ctx.seed})
        with torch.random.fork_rng():  # psi's reparameterised noise: seeded, global RNG kept
            torch.manual_seed(self.ctx.seed)
            self.history = train(
                learner, loss_fn, len(y), settings, checkpoint=ckpt, progress=self.ctx.progress,
                desc=self.name, rngs={"polya_gamma": rng},
                identity=checkpoint_identity(self.name, self.options,
                                             self.ctx.backbone.fingerprint(), x, y,
                                             templates=self.ctx.templates),
            )
        if len(val):
            with torch.no_grad():
                pred = self.predict(val.features[self.feature_kind], val.classnames).probs
            self.selected["val_accuracy"] = float((pred.argmax(1) == val.labels).float().mean())

    @torch.no_grad()
    def predict(self, features: torch.Tensor, classnames: Sequence[str]) -> Prediction:
        if self.learner is None:
            raise RuntimeError(f"{self.name}: fit or load_state_dict before predict")
        # class prompts encoded once per call (CoOp) / in memory-sized chunks (CoCoOp)
        logits = self.learner.predict_logits(features, classnames)
        return Prediction(logits.softmax(-1))

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

    @classmethod
    def default_options(cls) -> dict[str, Any]:
        return {**super().default_options(), "class_specific": False}

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
    likelihood = "ove-pg"


@register_method
class CoCoOp(PromptLearningMethod):
    """CoCoOp: context shifted per image by a meta-net on the cached image features."""

    name = "cocoop"
    default_lam = 0.1
    demo_options: ClassVar[dict[str, Any] | None] = {"epochs": 1, "batch_size": 8}

    @classmethod
    def default_options(cls) -> dict[str, Any]:
        return {**super().default_options(), "batch_size": 4}

    def make_learner(self, classnames: Sequence[str]) -> CoCoOpPromptLearner:
        o = self.options
        return CoCoOpPromptLearner(self.ctx.backbone, o["n_ctx"], o["ctx_init"],
                                   seed=self.ctx.seed)


@register_method
class CoCoOpOvePG(CoCoOp):
    """CoCoOp trained with the OVE-PG objective (lambda = 0.1)."""

    name = "cocoop-ove-pg"
    likelihood = "ove-pg"
