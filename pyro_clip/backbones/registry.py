"""Backbones by name, in the manner of open_clip's model registry.

Spec strings: ``"conse"`` (offline pre-trained default), ``"open_clip:<model>[:<pretrained>]"``
where ``<pretrained>`` is an open_clip tag (``openai``, ``laion2b_s34b_b79k``), a local
checkpoint file, or omitted/``random`` for random weights (tests).

Activation: OpenAI's CLIP weights use QuickGELU. It is resolved from the pretrained tag's
open_clip config (``open_clip:ViT-B-16:openai`` builds the QuickGELU ViT-B-16) or from a
``-quickgelu`` model name. A local checkpoint of a model that has QuickGELU weights must say
which it is, by the model name (``open_clip:ViT-B-16-quickgelu:/path/ViT-B-16.pt``) or by a
``?quick_gelu=1`` / ``?quick_gelu=0`` suffix (``open_clip:ViT-B-16:/path/model.pt?quick_gelu=1``).
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


def parse_open_clip_spec(spec: str) -> tuple[str, str | None, bool | None]:
    """``"open_clip:<model>[:<pretrained>][?quick_gelu=0|1]"`` -> (model, pretrained, quick_gelu).

    ``pretrained`` is None for random weights; ``quick_gelu`` None when not declared.
    """
    body = spec.removeprefix("open_clip:")
    quick_gelu: bool | None = None
    if "?" in body:
        body, query = body.rsplit("?", 1)
        key, _, value = query.partition("=")
        if key.strip() != "quick_gelu" or value.strip() not in ("0", "1", "true", "false"):
            raise BackboneError(
                f"backbone {spec!r}: the only option after '?' is quick_gelu=1 or quick_gelu=0 "
                f"(the activation the checkpoint was trained with), got {query!r}"
            )
        quick_gelu = value.strip() in ("1", "true")
    model, _, pretrained = body.partition(":")
    return model, (None if pretrained in ("", "random", "none") else pretrained), quick_gelu


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
        model, pretrained, quick_gelu = parse_open_clip_spec(spec)
        kwargs.setdefault("quick_gelu", quick_gelu)
        return OpenClipBackbone(model, pretrained=pretrained, **kwargs)
    raise BackboneError(
        f"unknown backbone {spec!r}; use 'conse' (offline default) or "
        "'open_clip:<model>[:<pretrained tag or checkpoint path>][?quick_gelu=0|1]', e.g. "
        "open_clip:ViT-B-32:openai "
        "(models: pyro-clip backbones)"
    )
