"""The ``open_clip:<model>[:<pretrained>][?quick_gelu=0|1]`` spec and the package's own
open_clip model configs (``model_configs/*.json``, added to open_clip's list on first use).

``<pretrained>`` is an open_clip tag (``openai``, ``laion2b_s34b_b79k``), a local checkpoint
file, or omitted/``random`` for random weights (tests).

Activation: OpenAI's CLIP weights use QuickGELU. It is resolved from the pretrained tag's
open_clip config (``open_clip:ViT-B-16:openai`` builds the QuickGELU ViT-B-16) or from a
``-quickgelu`` model name. A local checkpoint of a model that has QuickGELU weights must say
which it is, by the model name (``open_clip:ViT-B-16-quickgelu:/path/ViT-B-16.pt``) or by a
``?quick_gelu=1`` / ``?quick_gelu=0`` suffix (``open_clip:ViT-B-16:/path/model.pt?quick_gelu=1``).
"""

from __future__ import annotations

import functools
from pathlib import Path

from pyro_clip.errors import BackboneError

CONFIG_DIR = Path(__file__).parent / "model_configs"


@functools.cache
def register_open_clip_configs() -> None:
    """Add ``model_configs/`` to open_clip's model list (once per process)."""
    import open_clip

    open_clip.add_model_config(CONFIG_DIR)


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
