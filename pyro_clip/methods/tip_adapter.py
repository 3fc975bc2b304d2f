"""Tip-Adapter and Tip-Adapter-F (Zhang et al., ECCV 2022): a key-value cache of the shots.

``logits = s cos(x, T) + alpha' * exp(-beta (1 - x K^T)) L`` (paper eq. 5-6), ``K`` the
normalised train features, ``L`` their one-hot labels. ``alpha`` is given on CLIP's logit scale
(100) and rescaled, ``alpha' = alpha * s / 100``, so the paper's grid works on any backbone.
Tip-Adapter is training-free; Tip-Adapter-F fine-tunes the keys ``K`` (AdamW, lr 1e-3, 20
epochs) at the ``alpha``/``beta`` the training-free search chose (the paper fixes 1.0/1.0, tuned
to CLIP's scale; see docs/baselines.md), then searches again over both the fine-tuned and the
initial keys. Both choose ``alpha``/``beta`` on the validation split only (the paper's code
searches them on the test set). Classes never trained on have no cache entries: their logits are
exactly zero-shot.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pyro_clip.data.augment import check_augment
from pyro_clip.features.cache import FeatureSet
from pyro_clip.features.views import ViewSampler, training_views
from pyro_clip.methods._linear_head import class_mapping
from pyro_clip.methods.base import Method, Prediction, register_method
from pyro_clip.methods.options import Option, augment_options, train_options
from pyro_clip.training.loop import TrainSettings, checkpoint_identity, train
from pyro_clip.training.selection import check_validation, grid, grid_search, validation_score

CLIP_SCALE = 100.0


class CacheModel(nn.Module):
    """Keys (M, D) (trainable in Tip-Adapter-F) and one-hot values (M, C_train)."""

    def __init__(self, keys: torch.Tensor, labels: torch.Tensor, n_classes: int) -> None:
        super().__init__()
        self.keys = nn.Parameter(F.normalize(keys.float(), dim=-1).clone())
        self.register_buffer("values", F.one_hot(labels, n_classes).float())

    def affinity(self, x: torch.Tensor, beta: float) -> torch.Tensor:
        """``exp(-beta (1 - x_hat K^T))`` (eq. 5); keys used as stored (the paper does not
        renormalise fine-tuned keys)."""
        return torch.exp(-beta * (1 - F.normalize(x.float(), dim=-1) @ self.keys.T))


class _TipBase(Method):
    """Shared cache construction, search and prediction."""

    #: whether the cache keys are fine-tuned before the search
    finetune: ClassVar[bool] = False

    OPTIONS: ClassVar[dict[str, Option]] = {
        "alpha": Option(None, "cache weight on CLIP's logit scale (null: chosen on "
                        "validation from alpha_grid)", float, (None,), low=0),
        "beta": Option(None, "sharpness of the cache affinity (null: chosen on validation "
                       "from beta_grid)", float, (None,), low=0),
        # the paper's search ranges (alpha in [0.1, 3], beta in [0.1, 7]), alpha extended to
        # 10 (weak priors such as ConSE need a heavier cache) and alpha = 0, which is
        # zero-shot CLIP, so validation can fall back to the prior
        "alpha_grid": Option([0.0, *np.linspace(0.1, 3.0, 15).round(4).tolist(), 4.0, 6.0,
                              10.0], "candidates for alpha=null", list, low=0, item=float),
        "beta_grid": Option(np.linspace(0.1, 7.0, 24).round(4).tolist(),
                            "candidates for beta=null", list, low=0, item=float),
        # the paper builds the cache from 10 augmented epochs (crop + flip)
        **augment_options(n_views=10),
    }

    def train_views(self) -> tuple[str, int] | None:
        """``(augment, n_views)`` for the runner to encode and cache, or None."""
        o = self.options
        check_augment(o["augment"], o["n_views"])
        return None if o["augment"] == "none" else (o["augment"], o["n_views"])

    def _views(self, train_set: FeatureSet) -> torch.Tensor:
        """(V, N, D) training features: the cached views, or the plain features (V = 1)."""
        o = self.options
        return training_views(train_set.features, self.feature_kind, o["augment"], o["n_views"],
                              self.name).float()

    def _alpha_scale(self) -> float:
        return self.ctx.backbone.logit_scale / CLIP_SCALE

    def fit(self, train_set: FeatureSet, val: FeatureSet) -> None:
        self.train_classnames = list(train_set.classnames)
        views = self._views(train_set)
        # K_i = normalise(mean_v f(aug_v(x_i))): CacheModel normalises the view mean
        self.cache = CacheModel(views.mean(0), train_set.labels, len(train_set.classnames))
        extra: dict[str, Any] = {}
        keys = {"initial": self.cache.keys.detach().clone()}
        if self.finetune:
            a0, b0 = self._init_values(keys, val)
            extra.update(init_alpha=a0, init_beta=b0,
                         train_loss=self._finetune(train_set, views, a0, b0))
            keys = {"fine-tuned": self.cache.keys.detach().clone(), **keys}
            if not self.options["search_initial_keys"]:
                del keys["initial"]
        self.cache.requires_grad_(False)
        candidates = grid(keys=list(keys), **self._axes())
        if len(candidates) == 1:
            self.alpha, self.beta = candidates[0]["alpha"], candidates[0]["beta"]
            self.selected = {**candidates[0], "searched": False, **extra}
            return
        result = self._search(keys, val, candidates)
        self.alpha, self.beta = result.best["alpha"], result.best["beta"]
        self.cache.keys.data.copy_(keys[result.best["keys"]])
        self.selected = {**result.record(), "searched": True, **extra}

    def _axes(self) -> dict[str, list[float]]:
        """Each of alpha, beta: its fixed value, or its grid."""
        o = self.options
        return {k: [float(o[k])] if o[k] is not None else [float(v) for v in o[f"{k}_grid"]]
                for k in ("alpha", "beta")}

    def _search(self, keys: dict[str, torch.Tensor], val: FeatureSet,
                candidates: list[dict[str, Any]]) -> Any:
        """Validation grid search over (keys, alpha, beta) candidates."""
        check_validation(val, self.name)
        xv = val.features[self.feature_kind]
        zs = self.ctx.zero_shot_logits(xv, val.classnames).float()
        values = self._values(val.classnames)
        xn = F.normalize(xv.float(), dim=-1)
        base = {name: 1 - xn @ k.T for name, k in keys.items()}  # reused for every beta

        def score(c: dict[str, Any]) -> tuple[float, float]:
            cache = torch.exp(-c["beta"] * base[c["keys"]]) @ values
            logits = zs + c["alpha"] * self._alpha_scale() * cache
            return validation_score(logits.softmax(-1), val.labels)

        return grid_search(candidates, score)

    def _init_values(self, keys: dict[str, torch.Tensor], val: FeatureSet) -> tuple[float, float]:
        """alpha, beta to fine-tune at: the options, or (``None``) the training-free
        Tip-Adapter's choice on validation, so training starts from a cache weight that suits
        the backbone (the paper's 1.0 is tuned to CLIP's logit scale and ImageNet)."""
        o = self.options
        if o["init_alpha"] is not None and o["init_beta"] is not None:
            return float(o["init_alpha"]), float(o["init_beta"])
        axes = self._axes()
        for k in ("alpha", "beta"):
            if o[f"init_{k}"] is not None:
                axes[k] = [float(o[f"init_{k}"])]
        if len(axes["alpha"]) == len(axes["beta"]) == 1:  # nothing to search
            return axes["alpha"][0], axes["beta"][0]
        best = self._search({"initial": keys["initial"]}, val,
                            grid(keys=["initial"], **axes)).best
        return float(best["alpha"]), float(best["beta"])

    def _finetune(self, train_set: FeatureSet, views: torch.Tensor, init_alpha: float,
                  init_beta: float) -> list[float]:
        """Fine-tune the keys with cross-entropy at ``init_alpha``/``init_beta``
        (Tip-Adapter-F)."""
        o = self.options
        x = train_set.features[self.feature_kind]
        # views (V, N, D): the queries are one augmented view per image per epoch
        zs = torch.stack([self.ctx.zero_shot_logits(v, train_set.classnames).float()
                          for v in views])  # (V, N, C)
        sample = ViewSampler(views, self.ctx.seed)
        y = train_set.labels
        a0, b0 = init_alpha * self._alpha_scale(), init_beta
        loo = bool(o["leave_one_out"])

        def loss_fn(idx: torch.Tensor) -> torch.Tensor:
            view = sample.draw(idx)
            affinity = self.cache.affinity(views[view, idx], b0)
            if loo:  # a query never sees its own key (see the module docstring)
                own = torch.zeros_like(affinity, dtype=torch.bool)
                own[torch.arange(len(idx)), idx] = True
                affinity = affinity.masked_fill(own, 0.0)
            logits = zs[view, idx] + a0 * affinity @ self.cache.values
            return F.cross_entropy(logits, y[idx])

        settings = TrainSettings(epochs=int(o["epochs"]), batch_size=int(o["batch_size"]),
                                 lr=float(o["lr"]), optimizer="adamw",
                                 weight_decay=float(o["weight_decay"]), seed=self.ctx.seed)
        ckpt = self.ctx.work_dir / "train_state.pt" if self.ctx.work_dir is not None else None
        identity = checkpoint_identity(self.name, o, self.ctx.backbone.fingerprint(), x, y,
                                       templates=self.ctx.templates)
        return train(self.cache, loss_fn, len(y), settings, checkpoint=ckpt,
                     progress=self.ctx.progress, desc=self.name, identity=identity,
                     rngs={"views": sample.generator})

    def _values(self, classnames: Sequence[str]) -> torch.Tensor:
        """One-hot values over the requested classes; columns of unseen classes are zero."""
        mapping = class_mapping(classnames, self.train_classnames)
        out = torch.zeros(self.cache.values.shape[0], len(classnames))
        seen = mapping >= 0
        out[:, seen] = self.cache.values[:, mapping[seen]]
        return out

    @torch.no_grad()
    def logits(self, features: torch.Tensor, classnames: Sequence[str]) -> torch.Tensor:
        zs = self.ctx.zero_shot_logits(features, classnames)
        if self.alpha == 0:
            return zs  # no cache term: zero-shot CLIP exactly
        cache = self.cache.affinity(features, self.beta) @ self._values(classnames)
        return zs.float() + self.alpha * self._alpha_scale() * cache

    def predict(self, features: torch.Tensor, classnames: Sequence[str]) -> Prediction:
        return Prediction(self.logits(features, classnames).softmax(-1))

    def state_dict(self) -> dict[str, Any]:
        return {"keys": self.cache.keys.detach(), "values": self.cache.values,
                "alpha": self.alpha, "beta": self.beta, "classnames": self.train_classnames}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        values = state["values"]
        self.cache = CacheModel(state["keys"], values.argmax(-1), values.shape[1])
        self.cache.keys.data.copy_(state["keys"])  # fine-tuned keys are not renormalised
        self.cache.requires_grad_(False)
        self.alpha, self.beta = float(state["alpha"]), float(state["beta"])
        self.train_classnames = list(state["classnames"])


@register_method
class TipAdapter(_TipBase):
    """Training-free Tip-Adapter: the cache is the normalised few-shot features."""

    name = "tip-adapter"
    demo_options: ClassVar[dict] = {}


@register_method
class TipAdapterF(_TipBase):
    """Tip-Adapter-F: keys fine-tuned with AdamW (lr 1e-3, 20 epochs) before the search."""

    name = "tip-adapter-f"
    finetune = True
    demo_options: ClassVar[dict] = {}

    # init_alpha / init_beta null: fine-tune at the training-free Tip-Adapter's validation
    # choice (the paper's fixed 1.0 suits CLIP on ImageNet, not ConSE: docs/baselines.md)
    OPTIONS: ClassVar[dict[str, Option]] = {
        **_TipBase.OPTIONS,
        "init_alpha": Option(None, "alpha the keys are fine-tuned at (null: the training-free "
                             "Tip-Adapter's validation choice)", float, (None,), low=0),
        "init_beta": Option(None, "beta the keys are fine-tuned at (null: as init_alpha)",
                            float, (None,), low=0),
        **train_options(epochs=20, batch_size=32, lr=1e-3, weight_decay=0.01),
        "leave_one_out": Option(False, "a training query ignores its own cache key", bool),
        "search_initial_keys": Option(True, "the final search also considers the "
                                      "un-fine-tuned keys", bool),
    }
