"""Backbones by name, in the manner of open_clip's model registry.

Spec strings: ``"conse"`` (offline pre-trained default), ``"open_clip:<model>[:<pretrained>]"``
where ``<pretrained>`` is an open_clip tag (``openai``, ``laion2b_s34b_b79k``), a local
checkpoint file, or omitted/``random`` for random weights (tests).
"""

from __future__ import annotations

import functools
from pathlib import Path

from pyro_clip.backbones.base import DualEncoder
from pyro_clip.errors import BackboneError

_CONFIG_DIR = Path(__file__).parent / "model_configs"


@functools.cache
def _register_open_clip_configs() -> None:
    import open_clip

    open_clip.add_model_config(_CONFIG_DIR)


def known_backbones() -> list[str]:
    """Every accepted spec prefix: the offline default and each open_clip model name."""
    import open_clip

    _register_open_clip_configs()
    return ["conse"] + [f"open_clip:{m}" for m in open_clip.list_models()]


def create_backbone(spec: str, **kwargs) -> DualEncoder:
    """Build the backbone named by ``spec`` (see module docstring); kwargs go to its class."""
    if spec == "conse":
        from pyro_clip.backbones.conse import ConSEBackbone

        return ConSEBackbone(**kwargs)
    if spec.startswith("open_clip:"):
        from pyro_clip.backbones.open_clip_backbone import OpenClipBackbone

        _register_open_clip_configs()
        parts = spec.split(":", 2)
        model = parts[1]
        pretrained = parts[2] if len(parts) > 2 else None
        if pretrained in ("", "random", "none"):
            pretrained = None
        return OpenClipBackbone(model, pretrained=pretrained, **kwargs)
    raise BackboneError(
        f"unknown backbone {spec!r}; use 'conse' (offline default) or "
        "'open_clip:<model>[:<pretrained tag or checkpoint path>]', e.g. open_clip:ViT-B-32:openai "
        "(models: pyro-clip backbones)"
    )
