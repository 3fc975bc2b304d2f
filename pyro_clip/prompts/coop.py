"""CoOp (Zhou et al., IJCV 2022): learnable context vectors before each class name.

Prompt for class c: ``[SOS] v_1 ... v_M [CLASS_c] . [EOS]`` (CoOp eq. 2), the ``v_m`` learnable,
the text tower frozen; ``p(y=c|x) = softmax_c(s * cos(x, g(t_c)))`` (CoOp eq. 3). Context is
shared by all classes (unified) or one per class (class-specific, CSC). The C class prompts are
encoded once per step, whatever the batch size ("class-level batching").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pyro_clip.backbones.base import DualEncoder, PromptTokens
from pyro_clip.errors import BackboneError, ConfigError

PLACEHOLDER = "X"


def _init_context(
    backbone: DualEncoder, n_ctx: int, ctx_init: str, generator: torch.Generator
) -> torch.Tensor:
    """(n_ctx, ctx_dim): embeddings of ``ctx_init``'s tokens, or N(0, 0.02^2) when it is empty."""
    if n_ctx < 1:
        raise ConfigError(f"n_ctx (number of context tokens) must be >= 1, got {n_ctx}")
    if not ctx_init:  # drawn on the generator's (CPU) device: the same start on every device
        return torch.randn(n_ctx, backbone.ctx_dim, generator=generator,
                           device=generator.device) * 0.02
    tokens = backbone.tokenize([ctx_init])
    n_init = int(tokens.eot_index[0]) - 1
    if n_init != n_ctx:
        raise ConfigError(
            f"ctx_init {ctx_init!r} is {n_init} tokens for this backbone but n_ctx={n_ctx}; "
            f"set n_ctx={n_init}, or ctx_init='' for random initialisation"
        )
    with torch.no_grad():
        return backbone.token_embeddings(tokens.ids)[0, 1 : 1 + n_ctx].float().clone()


class CoOpPromptLearner(nn.Module):
    """Learnable context for a frozen ``backbone`` (not a submodule: it is never saved/trained).

    ``class_names``: with ``class_specific=True`` one context per listed class; classes not in
    the list use ``fallback(classnames) -> (K, embed_dim)`` text weights (the zero-shot
    classifier in :mod:`pyro_clip.methods.prompt_learning`).
    """

    def __init__(
        self,
        backbone: DualEncoder,
        n_ctx: int = 4,
        ctx_init: str = "a photo of a",
        class_specific: bool = False,
        class_names: Sequence[str] = (),
        seed: int = 1,
        fallback: Callable[[Sequence[str]], torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        self.__dict__["backbone"] = backbone  # frozen and shared: kept out of parameters()
        self.n_ctx = n_ctx
        self.class_specific = class_specific
        self.class_names = list(class_names)
        self.fallback = fallback
        gen = torch.Generator().manual_seed(seed)
        ctx = _init_context(backbone, n_ctx, ctx_init, gen)
        if class_specific:
            if not self.class_names:
                raise ConfigError("class-specific context needs the training class names")
            ctx = ctx.expand(len(self.class_names), -1, -1).clone()
        self.ctx = nn.Parameter(ctx.to(backbone.runtime.device))
        self._prompt_cache: dict[tuple[str, ...], tuple[PromptTokens, torch.Tensor]] = {}

    def prompts(self, classnames: Sequence[str]) -> tuple[PromptTokens, torch.Tensor]:
        """Tokens and frozen input embeddings of ``"X ... X {name}."`` (cached per class list)."""
        key = tuple(classnames)
        if key not in self._prompt_cache:
            b = self.backbone
            holder = " ".join([PLACEHOLDER] * self.n_ctx)
            tokens = b.tokenize([f"{holder} {name}." for name in classnames])
            x_id = b.tokenize([PLACEHOLDER]).ids[0, 1]
            if not bool((tokens.ids[:, 1 : 1 + self.n_ctx] == x_id).all()):
                raise BackboneError(
                    f"{b.name}: placeholder {PLACEHOLDER!r} is not one token per context slot "
                    "after the start token; this tokenizer is not supported for prompt learning"
                )
            with torch.no_grad():
                embeds = b.token_embeddings(tokens.ids).float()
            self._prompt_cache[key] = (tokens, embeds)
        return self._prompt_cache[key]

    def _splice(self, embeds: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        """Put ``ctx`` (..., n_ctx, D) in positions 1..n_ctx of ``embeds`` (..., L, D)."""
        prefix = embeds[..., :1, :].expand(*ctx.shape[:-2], -1, -1)
        suffix = embeds[..., 1 + self.n_ctx :, :].expand(*ctx.shape[:-2], -1, -1)
        return torch.cat([prefix, ctx, suffix], dim=-2)

    def _class_contexts(self, classnames: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Context per class (K, n_ctx, D) for the known ones, and the mask of known classes."""
        if not self.class_specific:
            known = torch.ones(len(classnames), dtype=torch.bool, device=self.ctx.device)
            return self.ctx.expand(len(classnames), -1, -1), known
        index = {n: i for i, n in enumerate(self.class_names)}
        known = torch.tensor([n in index for n in classnames], dtype=torch.bool,
                             device=self.ctx.device)
        rows = torch.tensor([index[n] for n in classnames if n in index], dtype=torch.long,
                            device=self.ctx.device)
        return self.ctx[rows], known

    def text_features(self, classnames: Sequence[str]) -> torch.Tensor:
        """(K, embed_dim) normalised class embeddings ``g(t_c)`` of the learned prompts."""
        ctx, known = self._class_contexts(classnames)
        out = torch.empty(len(classnames), self.backbone.embed_dim, dtype=ctx.dtype,
                          device=ctx.device)
        if known.any():
            names = [n for n, k in zip(classnames, known.tolist(), strict=True) if k]
            tokens, embeds = self.prompts(names)
            # all K prompts in one text-tower pass, cut at the longest prompt (autocast inside)
            feats = self.backbone.encode_token_embeddings(self._splice(embeds, ctx), tokens)
            feats = feats.to(ctx.dtype)
            if known.all():
                return F.normalize(feats, dim=-1)
            out = out.index_put((known.nonzero().flatten(),), F.normalize(feats, dim=-1))
        if self.fallback is None:
            raise ConfigError("class-specific CoOp met unseen classes and has no fallback")
        unseen = [n for n, k in zip(classnames, known.tolist(), strict=True) if not k]
        weights = F.normalize(self.fallback(unseen).to(out.device, out.dtype), dim=-1)
        return out.index_put(((~known).nonzero().flatten(),), weights)

    def logits(self, image_features: torch.Tensor, classnames: Sequence[str]) -> torch.Tensor:
        """(B, K) ``s * cos(x, g(t_c))``; the class prompts are encoded once for the batch."""
        text = self.text_features(classnames)
        x = F.normalize(image_features.to(text.device, text.dtype), dim=-1)
        return self.backbone.logit_scale * x @ text.T

    @torch.no_grad()
    def predict_logits(
        self, image_features: torch.Tensor, classnames: Sequence[str], chunk: int = 4096
    ) -> torch.Tensor:
        """(N, K) logits of many images: the K class prompts are encoded once per call (not
        once per chunk of images), then one matrix product per ``chunk`` images."""
        text = self.text_features(classnames)
        scale = self.backbone.logit_scale
        return torch.cat([
            scale * F.normalize(xb.to(text.device, text.dtype), dim=-1) @ text.T
            for xb in image_features.split(chunk)
        ])
