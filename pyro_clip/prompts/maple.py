"""MaPLe (Khattak et al., CVPR 2023): deep text prompts coupled to deep visual prompts.

Text branch: ``n_ctx`` learnable vectors replace the first ``n_ctx`` tokens of
``"{ctx_init} {class}."`` (MaPLe eq. 2), and before each text block ``i = 1..J-1`` the same
positions are overwritten by fresh learnable prompts ``P_i`` (eq. 4). Vision branch: the
prompts are *projected* from the text ones by coupling functions, linear maps
``F_i: ctx_dim -> vision width`` (eq. 5): ``F_0(P_0)`` is appended to the patch tokens and
``F_i(P_i)`` replaces them before vision block i. Both towers stay frozen; the image encoder
runs in training (its features depend on the prompts, so none are cached).
Paper defaults: 2 context tokens initialised from "a photo of a", depth J = 9.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pyro_clip.backbones.base import DualEncoder, PromptTokens
from pyro_clip.errors import ConfigError
from pyro_clip.prompts.coop import PLACEHOLDER


def check_deep_backbone(backbone: DualEncoder, depth: int) -> dict[str, int]:
    """Layer counts of a backbone with deep-prompt hooks; one-line refusal otherwise."""
    if not hasattr(backbone, "encode_images_deep"):
        raise ConfigError(
            f"MaPLe needs an open_clip ViT backbone (text and vision transformers with tokens); "
            f"{backbone.name!r} has none, use e.g. --backbone open_clip:ViT-B-16:<weights>")
    info = backbone.deep_prompt_info()
    most = min(info["text_layers"], info["vision_layers"])
    if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= most:
        raise ConfigError(f"prompt_depth must be an integer in 1..{most} (layers of "
                          f"{backbone.name}), got {depth!r}; the paper uses 9 on ViT-B/16")
    return info


class MaPLePromptLearner(nn.Module):
    """Coupled deep prompts for a frozen ``backbone`` (kept out of ``parameters()``)."""

    def __init__(self, backbone: DualEncoder, n_ctx: int = 2, ctx_init: str = "a photo of a",
                 depth: int = 9, seed: int = 1) -> None:
        super().__init__()
        self.__dict__["backbone"] = backbone
        info = check_deep_backbone(backbone, depth)
        if n_ctx < 1:
            raise ConfigError(f"n_ctx (number of context tokens) must be >= 1, got {n_ctx}")
        self.n_ctx, self.depth = n_ctx, depth
        self.class_names: list[str] = []
        self.prefix = ctx_init if ctx_init else " ".join([PLACEHOLDER] * n_ctx)
        with torch.random.fork_rng(devices=[]):  # seeded init, global RNG untouched
            torch.manual_seed(seed)
            if ctx_init:
                tokens = backbone.tokenize([ctx_init])
                n_init = int(tokens.eot_index[0]) - 1
                if n_ctx > n_init:
                    raise ConfigError(f"ctx_init {ctx_init!r} is {n_init} tokens but n_ctx="
                                      f"{n_ctx}; set n_ctx <= {n_init} or ctx_init=''")
                with torch.no_grad():
                    ctx = backbone.token_embeddings(tokens.ids)[0, 1 : 1 + n_ctx].float().clone()
            else:
                ctx = torch.randn(n_ctx, backbone.ctx_dim) * 0.02
            self.ctx = nn.Parameter(ctx)
            width = info["vision_width"]
            self.proj = nn.Linear(backbone.ctx_dim, width)
            self.text_deep = nn.ParameterList(
                [nn.Parameter(torch.randn(n_ctx, backbone.ctx_dim) * 0.02)
                 for _ in range(depth - 1)])
            one = nn.Linear(backbone.ctx_dim, width)  # MaPLe clones one initialised layer
            self.proj_deep = nn.ModuleList([copy.deepcopy(one) for _ in range(depth - 1)])
        self._prompt_cache: dict[tuple[str, ...], tuple[PromptTokens, torch.Tensor]] = {}

    def prompts(self, classnames: Sequence[str]) -> tuple[PromptTokens, torch.Tensor]:
        """Tokens and frozen input embeddings of ``"{prefix} {class}."`` (cached per list)."""
        key = tuple(classnames)
        if key not in self._prompt_cache:
            tokens = self.backbone.tokenize([f"{self.prefix} {n}." for n in classnames])
            with torch.no_grad():
                embeds = self.backbone.token_embeddings(tokens.ids).float()
            self._prompt_cache[key] = (tokens, embeds)
        return self._prompt_cache[key]

    def text_features(self, classnames: Sequence[str]) -> torch.Tensor:
        """(K, embed_dim) normalised class embeddings with the deep text prompts."""
        tokens, embeds = self.prompts(classnames)
        embeds = embeds.to(self.ctx.device)
        ctx = self.ctx.expand(len(classnames), -1, -1)
        x = torch.cat([embeds[:, :1], ctx, embeds[:, 1 + self.n_ctx :]], dim=1)
        feats = self.backbone.encode_token_embeddings_deep(x, tokens, list(self.text_deep))
        return F.normalize(feats, dim=-1)

    def visual_prompts(self) -> list[torch.Tensor]:
        """``[F_0(P_0), F_1(P_1), ...]``: the coupling functions applied to the text prompts."""
        return [self.proj(self.ctx)] + [f(p) for f, p in zip(self.proj_deep, self.text_deep,
                                                              strict=True)]

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, embed_dim) normalised image features with the coupled visual prompts."""
        return F.normalize(self.backbone.encode_images_deep(pixels, self.visual_prompts()), dim=-1)

    def logits(self, pixels: torch.Tensor, classnames: Sequence[str]) -> torch.Tensor:
        """(B, K) ``s * cos(image(x; prompts), text(c; prompts))``."""
        text = self.text_features(classnames)
        image = self.image_features(pixels).to(text.dtype)
        return self.backbone.logit_scale * image @ text.T
