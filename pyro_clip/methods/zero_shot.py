"""Zero-shot classification with the frozen backbone and hand-written prompt templates."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch

from pyro_clip.features.cache import FeatureSet
from pyro_clip.methods.base import Method, Prediction, register_method


@register_method
class ZeroShot(Method):
    """``p(y=c|x) = softmax_c(s * cos(f(x), t_c))``, ``t_c`` the mean template embedding."""

    name = "zero-shot"
    has_weights = False
    demo_options: ClassVar[dict] = {}

    def fit(self, train: FeatureSet, val: FeatureSet) -> None:
        """Nothing to learn: the pre-trained model is the classifier."""

    def predict(self, features: torch.Tensor, classnames: Sequence[str]) -> Prediction:
        return Prediction(self.ctx.zero_shot_logits(features, classnames).softmax(-1))
