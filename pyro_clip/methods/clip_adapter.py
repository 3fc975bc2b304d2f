"""CLIP-Adapter (Gao et al., IJCV 2024): a residual bottleneck MLP on the image feature.

``x' = r A(x) + (1 - r) x`` with ``A = ReLU o Linear(D/4 -> D) o ReLU o Linear(D -> D/4)``
(reduction 4, residual ratio ``r = 0.2``, paper eq. 2-3), then cosine logits with the frozen
zero-shot text classifier, ``s cos(x', t_c)``. The classifier is text, so any class name works:
classes never trained on use their zero-shot text embedding with the adapted image feature.
Trained with the shared loop (:mod:`pyro_clip.training.loop`); the ratio is fixed as in the paper.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from pyro_clip.backbones.base import cosine_logits
from pyro_clip.data.augment import check_augment
from pyro_clip.errors import ConfigError
from pyro_clip.features.cache import FeatureSet
from pyro_clip.features.views import ViewSampler, training_views
from pyro_clip.methods.base import Method, Prediction, register_method
from pyro_clip.methods.options import Option, augment_options, train_options
from pyro_clip.training.loop import TrainSettings, checkpoint_identity, train


class ResidualBottleneck(nn.Module):
    """Bottleneck MLP with a residual mix: ``r A(x) + (1 - r) x``."""

    def __init__(self, dim: int, reduction: int, ratio: float) -> None:
        super().__init__()
        self.ratio = ratio
        self.mlp = nn.Sequential(
            nn.Linear(dim, dim // reduction, bias=False), nn.ReLU(inplace=True),
            nn.Linear(dim // reduction, dim, bias=False), nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ratio * self.mlp(x) + (1 - self.ratio) * x


@register_method
class ClipAdapter(Method):
    """CLIP-Adapter on cached features (see module docstring)."""

    name = "clip-adapter"
    demo_options: ClassVar[dict] = {"epochs": 20}

    # augment: CLIP-Adapter trains on CoOp's crop + flip pipeline (pyro_clip.features.views)
    OPTIONS: ClassVar[dict[str, Option]] = {
        "reduction": Option(4, "bottleneck width D / reduction", int, low=1),
        "ratio": Option(0.2, "residual ratio r of the adapted feature", float, low=0, high=1),
        **train_options(epochs=50, batch_size=32, lr=1e-3, weight_decay=1e-4,
                        optimizer="adamw"),
        **augment_options(n_views=8),
    }

    def train_views(self) -> tuple[str, int] | None:
        """``(augment, n_views)`` for the runner to encode and cache, or None."""
        o = self.options
        check_augment(o["augment"], o["n_views"])
        return None if o["augment"] == "none" else (o["augment"], o["n_views"])

    def _check_options(self, dim: int) -> None:
        o = self.options
        if dim // int(o["reduction"]) < 1:
            raise ConfigError(f"clip-adapter: reduction must be in 1..{dim} for {dim}-d features, "
                              f"got {o['reduction']}")

    def build(self, dim: int) -> ResidualBottleneck:
        # initial weights seeded, global RNG untouched, built on the CPU so that every device
        # starts from the same weights; then moved to the run's device
        with torch.random.fork_rng(), torch.device("cpu"):
            torch.manual_seed(self.ctx.seed)
            adapter = ResidualBottleneck(dim, int(self.options["reduction"]),
                                         float(self.options["ratio"]))
        return adapter.to(self.ctx.device)

    def fit(self, train_set: FeatureSet, val: FeatureSet) -> None:
        x, y = train_set.features[self.feature_kind].float(), train_set.labels
        self._check_options(x.shape[1])
        self.adapter = self.build(x.shape[1])
        text = self.ctx.text_classifier(train_set.classnames).float()
        scale = self.ctx.backbone.logit_scale

        o = self.options
        sample = ViewSampler(training_views(train_set.features, self.feature_kind, o["augment"],
                                            o["n_views"], self.name).float(), self.ctx.seed)

        def loss_fn(idx: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(cosine_logits(self.adapter(sample(idx)), text, scale), y[idx])

        o = self.options
        settings = TrainSettings(epochs=int(o["epochs"]), batch_size=int(o["batch_size"]),
                                 lr=float(o["lr"]), optimizer=str(o["optimizer"]),
                                 weight_decay=float(o["weight_decay"]), seed=self.ctx.seed)
        ckpt = self.ctx.work_dir / "train_state.pt" if self.ctx.work_dir is not None else None
        identity = checkpoint_identity(self.name, o, self.ctx.backbone.fingerprint(), x, y,
                                       templates=self.ctx.templates)
        history = train(self.adapter, loss_fn, len(y), settings, checkpoint=ckpt,
                        progress=self.ctx.progress, desc=self.name, identity=identity,
                        rngs={"views": sample.generator})
        self.adapter.eval().requires_grad_(False)
        self.selected = {"ratio": float(o["ratio"]), "searched": False,
                         "final_train_loss": history[-1]}

    @torch.no_grad()
    def predict(self, features: torch.Tensor, classnames: Sequence[str]) -> Prediction:
        text = self.ctx.text_classifier(classnames).float()
        logits = cosine_logits(self.adapter(features.float()), text, self.ctx.backbone.logit_scale)
        return Prediction(logits.softmax(-1))

    def state_dict(self) -> dict[str, Any]:
        return {"adapter": self.adapter.state_dict(), "dim": self.adapter.mlp[0].in_features}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.adapter = self.build(int(state["dim"]))
        self.adapter.load_state_dict(state["adapter"])
        self.adapter.eval().requires_grad_(False)
