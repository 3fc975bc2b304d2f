"""Linear-probe CLIP: L2-regularised logistic regression on frozen image features.

Radford et al. (2021, Sec. 3.2) fit scikit-learn's L-BFGS logistic regression with the inverse
regularisation ``C`` swept on validation; CoOp (Zhou et al. 2022) reports it as "Linear probe
CLIP". Here the penalty ``lam`` (``C = 1/(lam N)``) is chosen on the validation split only.

``center="zero-shot"`` (default) shrinks towards the zero-shot classifier, ``W ~ N(s T, .)``,
with no bias, so the head reduces to zero-shot CLIP as ``lam -> inf`` and rows of classes never
trained on (the zero-shot rows ``s t_c``) share the learned rows' logit scale.
``center="zero"`` is the classic probe (penalty towards 0, free bias); unseen classes then get
zero-shot rows too, but on a scale the probe never calibrated against.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch

from pyro_clip.features.cache import FeatureSet
from pyro_clip.methods._linear_head import class_mapping, fit_logistic, merge_rows, normalize
from pyro_clip.methods.base import Method, Prediction, register_method
from pyro_clip.methods.options import Option
from pyro_clip.training.selection import check_validation, grid_search, log_grid, validation_score

CENTERS = ("zero-shot", "zero")


@register_method
class LinearProbe(Method):
    """``p(y|x) = softmax(W x/|x| + b)``, ``W`` the penalised MAP (see module docstring)."""

    name = "linear-probe"
    demo_options: ClassVar[dict] = {}

    OPTIONS: ClassVar[dict[str, Option]] = {
        "center": Option("zero-shot", "prior mean of the head: the zero-shot rows (no bias) "
                         "or zero (classic probe, free bias)", choices=CENTERS),
        "lam": Option(None, "L2 penalty (null: chosen on validation from lam_grid)", float,
                      (None,), low=0, low_open=True),
        "lam_grid": Option(log_grid(1e-4, 10.0, 11), "candidates for lam=null", list, low=0,
                           low_open=True, item=float),
        "max_iter": Option(500, "L-BFGS iterations per fit", int, low=1),
    }

    def head_prior(self, classnames: Sequence[str]) -> torch.Tensor:
        """Prior mean of the rows: ``s * t_c`` (zero-shot centre) or zeros (classic probe)."""
        zs = self.ctx.backbone.logit_scale * self.ctx.text_classifier(classnames).double()
        return zs if self.options["center"] == "zero-shot" else torch.zeros_like(zs)

    def fit(self, train: FeatureSet, val: FeatureSet) -> None:
        kind, bias = self.feature_kind, self.options["center"] == "zero"
        x, y = normalize(train.features[kind]), train.labels
        prior = self.head_prior(train.classnames)
        self.train_classnames = list(train.classnames)

        def solve(lam: float, init=None):
            return fit_logistic(x, y, prior, lam, bias, init, self.options["max_iter"])

        if self.options["lam"] is not None:
            self.weight, self.bias = solve(float(self.options["lam"]))
            self.selected = {"lam": float(self.options["lam"]), "searched": False}
            return
        check_validation(val, self.name)
        solutions: dict[float, tuple] = {}
        warm = None
        # largest penalty first: each solution warm-starts the next, weaker-penalty problem
        for lam in sorted((float(v) for v in self.options["lam_grid"]), reverse=True):
            warm = solutions[lam] = solve(lam, warm)

        def score(cand: dict[str, Any]) -> tuple[float, float]:
            self.weight, self.bias = solutions[cand["lam"]]
            probs = LinearProbe.logits(self, val.features[kind], val.classnames).softmax(-1)
            return validation_score(probs, val.labels)

        result = grid_search([{"lam": float(v)} for v in self.options["lam_grid"]], score)
        self.weight, self.bias = solutions[result.best["lam"]]
        self.selected = {**result.record(), "searched": True}

    def logits(self, features: torch.Tensor, classnames: Sequence[str]) -> torch.Tensor:
        """Learned rows for trained classes, zero-shot rows ``s t_c`` (bias 0) for the others."""
        mapping = class_mapping(classnames, self.train_classnames)
        zs = self.ctx.backbone.logit_scale * self.ctx.text_classifier(classnames).double()
        w = merge_rows(self.weight, zs, mapping)
        out = normalize(features) @ w.T
        if self.bias is not None:
            out = out + merge_rows(self.bias, torch.zeros(len(classnames)).double(), mapping)
        return out

    def predict(self, features: torch.Tensor, classnames: Sequence[str]) -> Prediction:
        return Prediction(self.logits(features, classnames).softmax(-1).float())

    def state_dict(self) -> dict[str, Any]:
        return {"weight": self.weight, "bias": self.bias, "classnames": self.train_classnames}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.weight, self.bias = state["weight"], state["bias"]
        self.train_classnames = list(state["classnames"])
