"""CoCoOp (Zhou et al., CVPR 2022): context conditioned on each image by a small meta-net.

``v_m(x) = v_m + pi(x)`` with ``pi`` a two-layer bottleneck MLP (Linear-ReLU-Linear, width
``embed_dim // 16``) on the normalised image feature (CoCoOp eq. 3); the prompt of every class
is re-encoded for every image, so a step costs B x C text-tower passes. The image tower is
frozen and its features cached, so the meta-net reads the cached "joint" features.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pyro_clip.backbones.base import DualEncoder, PromptTokens
from pyro_clip.prompts.coop import CoOpPromptLearner

#: tokens (images x classes x sequence length) per text-tower pass when predicting
PREDICT_TOKENS = 2**16


class CoCoOpPromptLearner(CoOpPromptLearner):
    """Unified context plus a meta-net token shift; ``chunk`` images are encoded at a time."""

    def __init__(
        self,
        backbone: DualEncoder,
        n_ctx: int = 4,
        ctx_init: str = "a photo of a",
        seed: int = 1,
        chunk: int = 32,
    ) -> None:
        super().__init__(backbone, n_ctx, ctx_init, class_specific=False, seed=seed)
        hidden = max(backbone.embed_dim // 16, 1)
        # seeded default init, global RNG left untouched; built on the CPU (whatever default
        # device a caller set) so that every device starts from the same weights
        with torch.random.fork_rng(), torch.device("cpu"):
            torch.manual_seed(seed)
            self.meta_net = nn.Sequential(
                nn.Linear(backbone.embed_dim, hidden), nn.ReLU(inplace=True),
                nn.Linear(hidden, backbone.ctx_dim),
            )
        self.meta_net.to(backbone.runtime.device)
        self.chunk = chunk

    def logits(
        self, image_features: torch.Tensor, classnames: Sequence[str], chunk: int | None = None
    ) -> torch.Tensor:
        """(B, K) ``s * cos(x, g(t_c(x)))`` with image-conditioned context; ``chunk`` images'
        B x K prompts per text-tower pass (default ``self.chunk``)."""
        x = F.normalize(image_features.to(self.ctx.device, torch.float32), dim=-1)
        tokens, embeds = self.prompts(classnames)
        chunk = chunk or self.chunk
        parts = [self._chunk_logits(x[i : i + chunk], tokens, embeds)
                 for i in range(0, x.shape[0], chunk)]
        return self.backbone.logit_scale * torch.cat(parts)

    @torch.no_grad()
    def predict_logits(
        self, image_features: torch.Tensor, classnames: Sequence[str],
        max_tokens: int = PREDICT_TOKENS,
    ) -> torch.Tensor:
        """(N, K) logits of many images. The prompts are image-conditional, so each image needs
        its own K prompts: the (images x classes) prompts go through the text tower in chunks of
        about ``max_tokens`` tokens (memory-bounded), the frozen embeddings spliced once."""
        tokens, _ = self.prompts(classnames)
        per_image = len(tokens) * int(tokens.ids.shape[1])
        return self.logits(image_features, classnames, chunk=max(1, max_tokens // per_image))

    def _chunk_logits(self, x: torch.Tensor, tokens: PromptTokens, embeds: torch.Tensor):
        b, k = x.shape[0], len(tokens)
        ctx = self.ctx[None] + self.meta_net(x)[:, None, :]  # (B, n_ctx, D)
        prompts = self._splice(embeds[None], ctx[:, None].expand(-1, k, -1, -1))  # (B, K, L, D)
        rep = PromptTokens(tokens.ids.repeat(b, 1), tokens.attention_mask.repeat(b, 1),
                           tokens.eot_index.repeat(b))
        text = self.backbone.encode_token_embeddings(prompts.flatten(0, 1), rep)
        text = F.normalize(text.float(), dim=-1).view(b, k, -1)
        return torch.einsum("bd,bkd->bk", x, text)
