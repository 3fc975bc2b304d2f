"""A backbone plug-in in one file: a colour "dual encoder" for ``toy_dataset``'s images.

Importing this module registers the spec ``toy-colour``. An image's joint feature is its mean
RGB in [0, 1]; a text's feature is the sum of its words' embeddings, where ``red``, ``green``
and ``blue`` embed as the unit vectors of their channels and every other word as zero. So a
prompt ``"a photo of a red."`` points at the red channel, and zero-shot classification picks
the class of an image's dominant channel.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from pyro_clip.backbones import DualEncoder, PromptTokens, register_backbone

#: token ids: padding, start, end, then one per colour word; other words map to OTHER
PAD, START, END, OTHER = 0, 1, 2, 3
COLOURS = {"red": 4, "green": 5, "blue": 6}


@register_backbone
class ToyColourBackbone(DualEncoder):
    """Mean colour against colour words (embed_dim 3, fixed logit scale 10)."""

    spec_prefix = "toy-colour"
    spec_usage = "'toy-colour' (test plug-in)"

    def __init__(self) -> None:
        super().__init__()
        self.name = "toy-colour"
        self.embed_dim = self.ctx_dim = 3
        table = torch.zeros(len(COLOURS) + OTHER + 1, 3)
        for channel, token in enumerate(COLOURS.values()):
            table[token, channel] = 1.0
        self.embedding = nn.Embedding.from_pretrained(table)

    @property
    def logit_scale(self) -> float:
        return 10.0

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        pixels = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        return torch.from_numpy(pixels).permute(2, 0, 1)

    def encode_images(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"joint": pixels.mean(dim=(2, 3))}

    def tokenize(self, texts: Sequence[str]) -> PromptTokens:
        rows = [[START, *(COLOURS.get(w, OTHER) for w in re.findall(r"[a-z]+", t.lower())), END]
                for t in texts]
        width = max(map(len, rows))
        ids = torch.tensor([r + [PAD] * (width - len(r)) for r in rows])
        return PromptTokens(ids, (ids != PAD).long(), torch.tensor([len(r) - 1 for r in rows]))

    def token_embeddings(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embedding(ids)

    def encode_token_embeddings(self, embeddings: torch.Tensor,
                                tokens: PromptTokens) -> torch.Tensor:
        return (embeddings * tokens.attention_mask.unsqueeze(-1)).sum(dim=1)

    def fingerprint(self) -> str:
        return hashlib.sha256(b"toy-colour:mean-rgb").hexdigest()
