"""``maple`` and ``maple-ove-pg``: MaPLe's coupled deep prompts, softmax or OVE-PG likelihood.

The image encoder runs inside training, so these methods consume ``features["pixels"]``
(:class:`~pyro_clip.data.pixels.PixelRows`, decoded lazily) instead of cached features
(``feature_kind = "pixels"``; the runner builds them). Augmentation is applied on the fly:
row r gets view ``v ~ U{0..n_views-1}`` per epoch, the same deterministic draw as the cached
views of the other prompt learners. OVE-PG's prior logits ``f0`` are the frozen zero-shot
logits of the same augmented image. Defaults: MaPLe's paper (2 tokens, depth 9, SGD lr 0.0035,
5 epochs, batch 4); ``maple-ove-pg`` as the OVE-PG release (4 tokens, depth 9, lambda 0.2).
Refused on backbones without token-based towers (the offline ``conse`` CNN).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from pyro_clip.data.pixels import PixelRows
from pyro_clip.errors import ConfigError
from pyro_clip.features.cache import FeatureSet
from pyro_clip.methods.base import MethodContext, register_method
from pyro_clip.methods.options import Option, with_defaults
from pyro_clip.methods.prompt_learning import PromptLearningMethod
from pyro_clip.prompts.maple import MaPLePromptLearner, check_deep_backbone


@register_method
class MaPLe(PromptLearningMethod):
    """MaPLe: deep text prompts projected to deep visual prompts (both towers frozen)."""

    name = "maple"
    feature_kind: ClassVar[str] = "pixels"
    #: backbone spec prefix it needs (suites with ``methods: all`` skip it elsewhere)
    requires_backbone: ClassVar[str] = "open_clip:"
    OPTIONS: ClassVar[dict[str, Option]] = {
        **with_defaults(PromptLearningMethod.OPTIONS, n_ctx=2, epochs=5, batch_size=4,
                        lr=0.0035, optimizer="sgd", weight_decay=5e-4),
        "prompt_depth": Option(9, "transformer layers that get prompts", int, low=1),
        "chunk": Option(64, "images decoded and encoded at a time when predicting", int,
                        low=1),
    }

    def setup(self, context: MethodContext) -> MaPLe:
        check_deep_backbone(context.backbone, self.options["prompt_depth"])  # refuse early
        return super().setup(context)

    def train_views(self) -> None:
        return None  # augmented on the fly: nothing to cache

    def make_learner(self, classnames: Sequence[str]) -> MaPLePromptLearner:
        o = self.options
        learner = MaPLePromptLearner(self.ctx.backbone, o["n_ctx"], o["ctx_init"],
                                     o["prompt_depth"], seed=self.ctx.seed)
        learner.class_names = list(classnames)
        return learner.to(self.ctx.device)

    def _rows(self, data: FeatureSet) -> PixelRows:
        rows = data.features.get(self.feature_kind)
        if not isinstance(rows, PixelRows):
            raise ConfigError(f"{self.name} trains the image encoder's prompts and needs raw "
                              "images (features['pixels'] as PixelRows); run it through "
                              "pyro-clip fit, which provides them")
        return rows

    def _batch_source(self, data: FeatureSet, options: dict[str, Any]):
        """``batch(idx) -> (pixels, f0)``: augmented pixels and their frozen zero-shot logits."""
        rows, augment = self._rows(data), options["augment"]
        views = np.random.default_rng(self.ctx.seed)  # checkpointed by the training loop
        rt = self.ctx.runtime

        def batch(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            v = torch.as_tensor(views.integers(options["n_views"], size=len(idx)))
            pixels = rt.to(rows[idx].load(augment, v.tolist(), self.ctx.seed))
            with torch.no_grad(), rt.autocast():
                frozen = self.ctx.backbone.encode_images(pixels)["joint"]
            f0 = self.ctx.zero_shot_logits(frozen.float(), data.classnames).float()
            return pixels, f0.to(pixels.device)

        batch.rngs = {"views": views}
        return batch

    @torch.no_grad()
    def _prior_logits(self, features, classnames: Sequence[str]) -> torch.Tensor:
        """Frozen zero-shot logits f0 of raw images, ``chunk`` images at a time (to CPU)."""
        rows = features if isinstance(features, PixelRows) else None
        step, rt = self.options["chunk"], self.ctx.runtime
        out = []
        for i in range(0, features.shape[0], step):
            x = rows[i : i + step].load() if rows is not None else features[i : i + step]
            with rt.autocast():
                frozen = self.ctx.backbone.encode_images(rt.to(x))["joint"]
            out.append(self.ctx.zero_shot_logits(frozen.float(), classnames).float().cpu())
        return torch.cat(out)

    def loss(self, learner, x, f0, y, names, options, rng) -> torch.Tensor:
        """The shared loss with the prompted forward under the run's autocast."""
        with self.ctx.runtime.autocast():
            return super().loss(learner, x, f0, y, names, options, rng)

    def _logits(self, learner, features, classnames: Sequence[str]) -> torch.Tensor:
        """(N, K) learned logits, ``chunk`` images decoded and encoded at a time (to CPU)."""
        rows = features if isinstance(features, PixelRows) else None
        step = self.options["chunk"]
        out = []
        for i in range(0, features.shape[0], step):
            x = rows[i : i + step].load() if rows is not None else features[i : i + step]
            with self.ctx.runtime.autocast():
                out.append(learner.logits(self.ctx.runtime.to(x), classnames).float().cpu())
        return torch.cat(out)


@register_method
class MaPLeOvePG(MaPLe):
    """MaPLe trained with the OVE-PG objective (4 context tokens, depth 9, lambda 0.2)."""

    name = "maple-ove-pg"
    OPTIONS: ClassVar[dict[str, Option]] = with_defaults(MaPLe.OPTIONS, n_ctx=4,
                                                         likelihood="ove-pg")
