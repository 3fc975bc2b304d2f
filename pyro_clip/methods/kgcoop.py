"""KgCoOp (Yao et al., CVPR 2023): CoOp regularised towards the hand-crafted text embeddings.

``loss = CE(s * cos(x, g(t_c)), y) + w * (1 - mean_c cos(g(t_c), w_c))`` with ``g(t_c)`` the
learned class embedding and ``w_c`` the zero-shot one of the run's templates. The paper (eq. 5)
writes ``||w_c - g(t_c)||^2`` of normalised vectors, which equals ``2 (1 - cos)``; the official
code (github htyao89/KgCoOp, trainers/kgcoop.py) uses ``1 - cos`` with ``w = 8.0`` (its
base-to-new scripts), so ``w`` here is the official code's (the paper's lambda is ``w / 2``).
It is the closest non-Bayesian relative of OVE-PG's KL term: both pull the learned classifier
towards the zero-shot one, KgCoOp in text-embedding space, OVE-PG in logit space.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from pyro_clip.methods.base import register_method
from pyro_clip.methods.options import Option
from pyro_clip.methods.prompt_learning import CoOp
from pyro_clip.models.ove_pg import ove_pg_loss
from pyro_clip.prompts.coop import CoOpPromptLearner


def knowledge_guidance(learned: torch.Tensor, hand_crafted: torch.Tensor) -> torch.Tensor:
    """``1 - mean_c cos(learned_c, hand_crafted_c)`` for (C, D) class embeddings (KgCoOp eq. 5)."""
    return 1.0 - F.cosine_similarity(learned, hand_crafted.to(learned.dtype), dim=-1).mean()


@register_method
class KgCoOp(CoOp):
    """CoOp + ``w * (1 - cos(learned, hand-crafted))``; ``w`` = 8.0 (official scripts)."""

    name = "kgcoop"
    select_axes: ClassVar[dict[str, dict[str, list[Any]]]] = {
        "softmax": {"w": [1.0, 2.0, 4.0, 8.0, 16.0]},
        "ove-pg": {"w": [1.0, 8.0], "lam": [0.2, 1.0]},
    }
    prior_options: ClassVar[tuple[str, ...]] = ("w", "lam")

    OPTIONS: ClassVar[dict[str, Option]] = {
        **CoOp.OPTIONS,
        "w": Option(8.0, "knowledge-guidance weight (official code: 8.0)", float, low=0),
    }

    def loss(self, learner: CoOpPromptLearner, x: torch.Tensor, f0: torch.Tensor,
             y: torch.Tensor, names: Sequence[str], options: dict[str, Any],
             rng: np.random.Generator) -> torch.Tensor:
        """CE (or OVE-PG) on the learned logits + ``w`` times the knowledge-guidance term."""
        text = learner.text_features(names)  # encoded once: logits and regulariser share it
        f = self.ctx.backbone.logit_scale * F.normalize(x.to(text.dtype), dim=-1) @ text.T
        if options["likelihood"] == "softmax":
            fit = F.cross_entropy(f, y)
        else:
            fit = ove_pg_loss(f, f0, y, self._ove_config(options), rng)
        return fit + options["w"] * knowledge_guidance(text, self.ctx.text_classifier(names))
