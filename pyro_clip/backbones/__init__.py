"""Dual-encoder backbones: open_clip models and the offline ConSE default, each a registered
:class:`DualEncoder` kind (:mod:`pyro_clip.backbones.registry`)."""

from pyro_clip.backbones.base import DualEncoder, PromptTokens, cosine_logits
from pyro_clip.backbones.registry import (
    create_backbone,
    known_backbones,
    register_backbone,
    unregister_backbone,
)

__all__ = ["DualEncoder", "PromptTokens", "cosine_logits", "create_backbone", "known_backbones",
           "register_backbone", "unregister_backbone"]
