"""The dual-encoder interface shared by every backbone.

A backbone maps images and texts into one embedding space; zero-shot logits are
``logit_scale * cos(image, text)`` (CLIP, Radford et al. 2021, eq. in Fig. 3). Prompt learners
use three hooks: :meth:`tokenize` (ids cut after the longest prompt's end-of-text token),
:meth:`token_embeddings` (ids -> input embeddings) and :meth:`encode_token_embeddings`
(embeddings -> text features), so learnable context vectors can replace placeholder tokens.
"""

from __future__ import annotations

import copy
import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from pyro_clip.errors import BackboneError
from pyro_clip.runtime import CPU, Runtime

#: class prompts per text-tower forward in :meth:`DualEncoder.zero_shot_weights`
TEXT_BATCH = 256


@dataclass
class PromptTokens:
    """Tokenised prompts, truncated after the longest sequence's end-of-text token.

    ``ids``: (N, L) token ids; ``attention_mask``: (N, L) 1 for real tokens; ``eot_index``: (N,)
    position of each prompt's end-of-text token (the feature read out by causal text towers).
    Position 0 holds the start token, so context vectors go in positions ``1..n_ctx``.
    """

    ids: torch.Tensor
    attention_mask: torch.Tensor
    eot_index: torch.Tensor

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def to(self, device: torch.device | str) -> PromptTokens:
        """The same tokens on ``device`` (a no-op when they are there already)."""
        return PromptTokens(self.ids.to(device), self.attention_mask.to(device),
                            self.eot_index.to(device))

    def __getitem__(self, rows: slice) -> PromptTokens:
        return PromptTokens(self.ids[rows], self.attention_mask[rows], self.eot_index[rows])


class DualEncoder(nn.Module, ABC):
    """Frozen image and text towers with a shared embedding space."""

    #: registry name, e.g. ``"conse"`` or ``"open_clip:ViT-B-32:openai"``
    name: str
    #: dimension of the joint image-text embedding space
    embed_dim: int
    #: width of the text tower's token embeddings (size of a learnable context vector)
    ctx_dim: int

    #: registry kind (:func:`~pyro_clip.backbones.registry.register_backbone`): the part of a
    #: spec before the first ``:``, e.g. ``"conse"``, ``"open_clip"``
    spec_prefix: ClassVar[str]
    #: how a spec of this kind is written, for the unknown-backbone message
    spec_usage: ClassVar[str] = ""
    #: position in ``known_backbones`` and in error messages
    spec_order: ClassVar[int] = 100

    @classmethod
    def from_spec(cls, spec: str, **kwargs: Any) -> DualEncoder:
        """Build from ``spec`` (its prefix is :attr:`spec_prefix`); by default the spec is the
        bare prefix and ``kwargs`` go to the constructor."""
        if spec != cls.spec_prefix:
            raise BackboneError(f"backbone {spec!r}: {cls.spec_prefix} takes nothing after "
                                f"':'; use {cls.spec_prefix!r}")
        return cls(**kwargs)

    @classmethod
    def known_specs(cls) -> list[str]:
        """The specs ``pyro-clip list backbones`` prints for this kind."""
        return [cls.spec_prefix]

    @property
    @abstractmethod
    def logit_scale(self) -> float:
        """Temperature multiplying cosine similarities (CLIP: ``exp(t)``, about 100)."""

    @abstractmethod
    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """PIL image -> (3, H, W) float tensor ready for :meth:`encode_images`."""

    @abstractmethod
    def encode_images(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, 3, H, W) pixels -> feature kinds; ``"joint"`` (B, embed_dim) is always present."""

    @abstractmethod
    def tokenize(self, texts: Sequence[str]) -> PromptTokens:
        """Tokenise and cut every sequence after the longest one's end-of-text token."""

    @abstractmethod
    def token_embeddings(self, ids: torch.Tensor) -> torch.Tensor:
        """(N, L) ids -> (N, L, ctx_dim) input token embeddings."""

    @abstractmethod
    def encode_token_embeddings(
        self, embeddings: torch.Tensor, tokens: PromptTokens
    ) -> torch.Tensor:
        """(N, L, ctx_dim) input embeddings -> (N, embed_dim) text features (unnormalised)."""

    @abstractmethod
    def fingerprint(self) -> str:
        """Identifies weights and preprocessing (what a checkpoint was trained on); the
        precision forwards run in is not part of it (see :meth:`feature_fingerprint`)."""

    def feature_fingerprint(self) -> str:
        """Key of the image features this backbone computes: :meth:`fingerprint`, plus the
        precision when it is not fp32 (bf16/fp16 features differ, so they never share a cache
        entry with fp32 ones)."""
        if self.runtime.precision == "fp32":
            return self.fingerprint()
        text = f"{self.fingerprint()}:precision={self.runtime.precision}"
        return hashlib.sha256(text.encode()).hexdigest()

    #: where forwards run and in which precision (set by :meth:`to_runtime`)
    runtime: Runtime = CPU

    def to_runtime(self, runtime: Runtime) -> DualEncoder:
        """Move the weights to ``runtime.device`` (in place); later forwards autocast as it says."""
        self.to(runtime.device)
        self.runtime = runtime
        return self

    def with_runtime(self, runtime: Runtime) -> DualEncoder:
        """A shallow copy that shares the weights (already on ``runtime.device``) and computes
        under ``runtime``; ``self`` is left unchanged, so one cached set of weights serves
        runs with different precisions."""
        twin = copy.copy(self)
        twin.runtime = runtime
        return twin

    def image_transform(self) -> Callable[[Image.Image], torch.Tensor]:
        """The :meth:`preprocess` callable handed to DataLoader workers (override with a
        picklable transform so that ``spawn`` workers need not pickle the whole model)."""
        return self.preprocess

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Texts -> (N, embed_dim) text features through the prompt hooks (unnormalised)."""
        tokens = self.tokenize(texts)
        return self.encode_token_embeddings(self.token_embeddings(tokens.ids), tokens)

    @torch.no_grad()
    def zero_shot_weights(
        self, classnames: Sequence[str], templates: Sequence[str] = ("a photo of a {}.",)
    ) -> torch.Tensor:
        """Zero-shot classifier (C, embed_dim) float32 on the backbone's device: the normalised
        mean of the normalised template embeddings (CLIP's prompt ensembling, Radford et al.
        2021, sec. 3.1.4). The C x T prompts are tokenised once and encoded in batches of up
        to :data:`TEXT_BATCH` prompts of equal token length (no padding is computed, and each
        prompt sees exactly the arithmetic of encoding it alone), not one class at a time."""
        texts = [t.format(name) for t in templates for name in classnames]
        tokens = self.tokenize(texts)
        lengths = tokens.eot_index + 1
        feats: torch.Tensor | None = None
        for length in torch.unique(lengths).tolist():
            for rows in (lengths == length).nonzero().flatten().split(TEXT_BATCH):
                sub = PromptTokens(tokens.ids[rows, :length], tokens.attention_mask[rows, :length],
                                   tokens.eot_index[rows])
                out = self.encode_token_embeddings(self.token_embeddings(sub.ids), sub).float()
                if feats is None:
                    feats = out.new_empty(len(texts), out.shape[-1])
                feats[rows.to(feats.device)] = out
        assert feats is not None
        feats = F.normalize(feats, dim=-1).view(len(templates), len(classnames), -1)
        return F.normalize(feats.mean(0), dim=-1)


def cosine_logits(
    image_features: torch.Tensor, text_features: torch.Tensor, scale: float | torch.Tensor
) -> torch.Tensor:
    """``scale * <x/|x|, w/|w|>`` for each image x and class weight w -> (B, C)."""
    return scale * F.normalize(image_features, dim=-1) @ F.normalize(text_features, dim=-1).T
