"""open_clip models as :class:`DualEncoder` backbones (any model name, pretrained tag or file).

Prompt hooks follow CoOp: learnable vectors replace token embeddings, then the text transformer
runs with its causal mask. Because attention is causal, cutting all sequences after the longest
end-of-text token leaves every feature unchanged and saves most of the 77-token cost.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from pyro_clip.backbones.base import DualEncoder, PromptTokens
from pyro_clip.backbones.open_clip_spec import parse_open_clip_spec, register_open_clip_configs
from pyro_clip.backbones.open_clip_weights import check_weights, hub_offline_mode, local_file_spec
from pyro_clip.backbones.registry import register_backbone
from pyro_clip.errors import BackboneError

QUICKGELU_SUFFIX = "-quickgelu"


def _quick_gelu_tags(model_name: str) -> list[str]:
    """Pretrained tags of ``model_name`` (or its ``-quickgelu`` twin) trained with QuickGELU."""
    from open_clip.pretrained import get_pretrained_cfg, list_pretrained_tags_by_model

    names = [model_name]
    if not model_name.endswith(QUICKGELU_SUFFIX):
        names.append(model_name + QUICKGELU_SUFFIX)
    return sorted({t for m in names for t in list_pretrained_tags_by_model(m)
                   if get_pretrained_cfg(m, t).get("quick_gelu", False)})


def resolve_quick_gelu(model_name: str, pretrained: str | None, declared: bool | None) -> bool:
    """Whether the model must use QuickGELU ``x * sigmoid(1.702 x)`` (OpenAI CLIP) or GELU.

    Sources, all of which must agree: the model config (``-quickgelu`` names set
    ``quick_gelu``), the pretrained tag's config in open_clip (``openai`` tags say
    ``quick_gelu=True``) and the spec's declaration ``?quick_gelu=0|1``. open_clip itself only
    warns when a GELU model loads QuickGELU weights (and says nothing for a local file,
    open_clip issue #771), so every feature would silently come from a mis-specified network.
    A local checkpoint for a model with QuickGELU tags must declare its activation.
    """
    import open_clip
    from open_clip.pretrained import get_pretrained_cfg

    model_qg = bool((open_clip.get_model_config(model_name) or {}).get("quick_gelu", False))
    if model_qg and declared is False:
        raise BackboneError(
            f"{model_name} is a QuickGELU model but the spec declares quick_gelu=0; drop the "
            f"{QUICKGELU_SUFFIX!r} suffix for a GELU model or drop '?quick_gelu=0'"
        )
    if pretrained is None:  # random weights: the config or the declaration decides
        return model_qg or bool(declared)
    base = model_name.removesuffix(QUICKGELU_SUFFIX)
    tag_cfg = {} if os.path.exists(pretrained) else (
        get_pretrained_cfg(model_name, pretrained) or get_pretrained_cfg(base, pretrained))
    if tag_cfg:
        tag_qg = bool(tag_cfg.get("quick_gelu", False))
        if declared is not None and declared != tag_qg:
            raise BackboneError(
                f"open_clip:{model_name}:{pretrained} weights were trained with "
                f"{'QuickGELU' if tag_qg else 'GELU'}, but the spec declares "
                f"quick_gelu={int(declared)}; drop the '?quick_gelu=' part"
            )
        if model_qg and not tag_qg:
            raise BackboneError(
                f"open_clip tag {pretrained!r} was trained with GELU, not QuickGELU; use "
                f"open_clip:{base}:{pretrained}"
            )
        return tag_qg
    if declared is not None or model_qg:  # a local file (or an unknown tag open_clip reports)
        return model_qg or bool(declared)
    qg_tags = _quick_gelu_tags(model_name) if os.path.exists(pretrained) else []
    if qg_tags:
        raise BackboneError(
            f"checkpoint {pretrained}: cannot tell whether it was trained with QuickGELU "
            f"({model_name}'s {qg_tags} weights were, the others used GELU). Declare it: "
            f"open_clip:{model_name}:{pretrained}?quick_gelu=1 (OpenAI weights) or "
            f"open_clip:{model_name}:{pretrained}?quick_gelu=0"
        )
    return False


def architecture_name(model_name: str, quick_gelu: bool) -> str:
    """The model name with the resolved activation: ``ViT-B-16-quickgelu`` or ``ViT-B-16``."""
    base = model_name.removesuffix(QUICKGELU_SUFFIX)
    return base + QUICKGELU_SUFFIX if quick_gelu else base


def _load_open_clip(
    model_name: str, pretrained: str | None, image_size: int | None, quick_gelu: bool = False
):
    import open_clip

    cached = check_weights(model_name, pretrained)  # one clear line, no download retries
    kwargs: dict = {"force_quick_gelu": quick_gelu}
    if image_size is not None:
        kwargs["force_image_size"] = image_size
    try:  # cached Hub weights are read from the cache alone (no requests)
        with hub_offline_mode() if cached else contextlib.nullcontext():
            model, _, preprocess = open_clip.create_model_and_transforms(
                model_name, pretrained=pretrained, **kwargs
            )
    except Exception as exc:  # hub / file errors have many types; re-raise one clear line
        if pretrained and os.path.exists(pretrained):
            raise BackboneError(
                f"checkpoint {pretrained} does not load into open_clip {model_name}: "
                f"{type(exc).__name__}: {exc}. Pass the model name the checkpoint was trained with."
            ) from exc
        raise BackboneError(
            f"could not get weights {model_name}:{pretrained} ({type(exc).__name__}: {exc}); "
            f"download them where there is internet and pass --backbone "
            f"{local_file_spec(model_name, quick_gelu)}"
        ) from exc
    return model, preprocess


@register_backbone
class OpenClipBackbone(DualEncoder):
    """An open_clip model; ``pretrained=None`` builds it with random weights (tests only).

    ``quick_gelu``: the activation the weights were trained with, if the caller declares it
    (``None``: resolved from the model name and the pretrained tag; see
    :func:`resolve_quick_gelu`). ``architecture`` holds the resolved model name.
    Spec: ``open_clip:<model>[:<tag or checkpoint>][?quick_gelu=0|1]``
    (:mod:`pyro_clip.backbones.open_clip_spec`).
    """

    spec_prefix = "open_clip"
    spec_usage = ("'open_clip:<model>[:<pretrained tag or checkpoint path>][?quick_gelu=0|1]', "
                  "e.g. open_clip:ViT-B-32:openai")
    spec_order = 10

    @classmethod
    def from_spec(cls, spec: str, **kwargs: Any) -> OpenClipBackbone:
        """``open_clip:<model>[:<pretrained>][?quick_gelu=0|1]``; kwargs go to the constructor."""
        if not spec.startswith("open_clip:"):
            raise BackboneError(f"backbone {spec!r} names no model; use {cls.spec_usage}")
        register_open_clip_configs()
        model, pretrained, quick_gelu = parse_open_clip_spec(spec)
        kwargs.setdefault("quick_gelu", quick_gelu)
        return cls(model, pretrained=pretrained, **kwargs)

    @classmethod
    def known_specs(cls) -> list[str]:
        """``open_clip:<model>`` for every model open_clip knows (the package's configs too)."""
        import open_clip

        register_open_clip_configs()
        return [f"open_clip:{m}" for m in open_clip.list_models()]

    def __init__(
        self,
        model_name: str = "ViT-B-32",
        pretrained: str | None = None,
        image_size: int | None = None,
        seed: int = 0,
        quick_gelu: bool | None = None,
    ) -> None:
        super().__init__()
        import open_clip

        torch.manual_seed(seed)  # random-init models must be reproducible
        self.model_name = model_name
        self.pretrained = pretrained
        self._seed = seed
        self.quick_gelu = resolve_quick_gelu(model_name, pretrained, quick_gelu)
        self.architecture = architecture_name(model_name, self.quick_gelu)
        self._model_cfg = dict(open_clip.get_model_config(model_name) or {})
        self._model_cfg["quick_gelu"] = self.quick_gelu
        if image_size is not None:
            self._model_cfg["vision_cfg"] = {**self._model_cfg.get("vision_cfg", {}),
                                             "image_size": image_size}
        self.model, self._preprocess = _load_open_clip(
            model_name, pretrained, image_size, self.quick_gelu
        )
        self.model.eval().requires_grad_(False)
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.name = f"open_clip:{model_name}:{pretrained or 'random'}"
        self._text = self._text_tower()
        self.embed_dim = int(self.encode_text(["a"]).shape[-1])
        self.ctx_dim = int(self._text["token_embedding"].weight.shape[-1])

    def _text_tower(self) -> dict:
        """Parts of the text tower (built-in CLIP tower or open_clip ``TextTransformer``)."""
        m = self.model
        tower = m if hasattr(m, "token_embedding") else getattr(m, "text", None)
        if tower is None or not hasattr(tower, "token_embedding"):
            raise BackboneError(
                f"{self.model_name}: prompt learning needs an open_clip text transformer; "
                "Hugging Face text towers are not supported, pick a CLIP/ViT model"
            )
        if getattr(tower, "cls_emb", None) is not None:
            raise BackboneError(f"{self.model_name}: CoCa-style text towers are not supported")
        pool = getattr(tower, "text_pool_type", getattr(tower, "pool_type", "argmax"))
        if pool not in ("argmax", "eos"):
            raise BackboneError(f"{self.model_name}: text pool type {pool!r} is not supported")
        return {
            "token_embedding": tower.token_embedding,
            "positional_embedding": tower.positional_embedding,
            "transformer": tower.transformer,
            "attn_mask": getattr(tower, "attn_mask", None),
            "ln_final": tower.ln_final,
            "text_projection": tower.text_projection,
            "pool": pool,
            "eos_id": getattr(tower, "text_eos_id", getattr(tower, "eos_id", None)),
        }

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.exp())

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return self._preprocess(image)

    def image_transform(self):
        return self._preprocess  # torchvision Compose: picklable for DataLoader workers

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        with self.runtime.autocast():
            return {"joint": self.model.encode_image(pixels.to(self.runtime.device))}

    def tokenize(self, texts: Sequence[str]) -> PromptTokens:
        ids = self.tokenizer(list(texts))
        if self._text["pool"] == "eos":
            eot = (ids == self._text["eos_id"]).int().argmax(dim=-1)
        else:  # the end-of-text token has the largest id in CLIP's vocabulary
            eot = ids.argmax(dim=-1)
        length = int(eot.max()) + 1
        ids = ids[:, :length]
        return PromptTokens(ids=ids, attention_mask=(ids != 0).long(), eot_index=eot)

    def token_embeddings(self, ids: torch.Tensor) -> torch.Tensor:
        table = self._text["token_embedding"]
        return table(ids.to(table.weight.device))

    def encode_token_embeddings(
        self, embeddings: torch.Tensor, tokens: PromptTokens
    ) -> torch.Tensor:
        t = self._text
        length = embeddings.shape[1]
        with self.runtime.autocast():
            x = embeddings + t["positional_embedding"][:length].to(embeddings.dtype)
            mask = t["attn_mask"]
            mask = mask[:length, :length] if mask is not None else None
            x = t["ln_final"](t["transformer"](x, attn_mask=mask))
            x = x[torch.arange(x.shape[0], device=x.device), tokens.eot_index.to(x.device)]
            proj = t["text_projection"]
            if proj is None:
                return x
            return proj(x) if isinstance(proj, torch.nn.Module) else x @ proj

    def fingerprint(self) -> str:
        """Weights (tag, or file size + mtime), the resolved architecture (model config with
        its activation) and the preprocessing."""
        h = hashlib.sha256(f"open_clip:{self.pretrained or 'random'}".encode())
        h.update(f"arch={self.architecture}".encode())
        h.update(json.dumps(self._model_cfg, sort_keys=True, default=str).encode())
        if self.pretrained and Path(self.pretrained).exists():
            stat = Path(self.pretrained).stat()
            h.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
        if self.pretrained is None:
            h.update(f"seed={self._seed}".encode())
        h.update(repr(self._preprocess).encode())
        return h.hexdigest()

    # --- deep prompt hooks (MaPLe, Khattak et al. CVPR 2023); new methods, used by
    # pyro_clip.prompts.maple. Both run the frozen blocks one by one so prompts can be
    # swapped in between layers; with no deep prompts they equal the plain forward.

    def deep_prompt_info(self) -> dict[str, int]:
        """Layers and widths of both towers; raises :class:`BackboneError` for non-ViT towers."""
        visual = self.model.visual
        if not all(hasattr(visual, a) for a in ("conv1", "class_embedding", "transformer")):
            raise BackboneError(f"{self.model_name}: deep (MaPLe) prompts need a ViT image "
                                "tower; pick a ViT model such as ViT-B-16")
        return {"text_layers": len(self._text["transformer"].resblocks),
                "vision_layers": len(visual.transformer.resblocks),
                "vision_width": int(visual.class_embedding.shape[-1])}

    @staticmethod
    def _run_blocks(transformer, x, attn_mask, swap) -> torch.Tensor:
        """``x`` (N, L, D) through ``transformer.resblocks``; ``swap(i, x)`` before block i."""
        batch_first = getattr(transformer, "batch_first", True)
        for i, block in enumerate(transformer.resblocks):
            x = swap(i, x)
            if not batch_first:
                x = block(x.transpose(0, 1), attn_mask=attn_mask).transpose(0, 1)
            else:
                x = block(x, attn_mask=attn_mask)
        return x

    def encode_token_embeddings_deep(
        self, embeddings: torch.Tensor, tokens: PromptTokens, deep: Sequence[torch.Tensor],
        start: int = 1,
    ) -> torch.Tensor:
        """Like :meth:`encode_token_embeddings`; before block ``i >= 1`` the tokens at
        ``start .. start + n - 1`` are replaced by ``deep[i - 1]`` (n, ctx_dim) (MaPLe eq. 4)."""
        t = self._text
        length = embeddings.shape[1]
        x = embeddings + t["positional_embedding"][:length].to(embeddings.dtype)
        mask = t["attn_mask"]
        mask = mask[:length, :length] if mask is not None else None

        def swap(i: int, x: torch.Tensor) -> torch.Tensor:
            if i == 0 or i > len(deep):
                return x
            p = deep[i - 1].to(x.dtype).expand(x.shape[0], -1, -1)
            return torch.cat([x[:, :start], p, x[:, start + p.shape[1]:]], dim=1)

        x = t["ln_final"](self._run_blocks(t["transformer"], x, mask, swap))
        x = x[torch.arange(x.shape[0]), tokens.eot_index]
        proj = t["text_projection"]
        if proj is None:
            return x
        return proj(x) if isinstance(proj, torch.nn.Module) else x @ proj

    def encode_images_deep(
        self, pixels: torch.Tensor, prompts: Sequence[torch.Tensor]
    ) -> torch.Tensor:
        """(B, embed_dim) image features with visual prompts (MaPLe eq. 5): ``prompts[0]``
        (n, width) is appended to the patch tokens after the positional embedding (before
        ``ln_pre``); before block ``i >= 1`` the last n tokens become ``prompts[i]``. The prompt
        tokens are dropped before pooling (the class token is what CLIP pools)."""
        v = self.model.visual
        self.deep_prompt_info()
        x = v.conv1(pixels.to(v.conv1.weight.dtype))
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        cls = v.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)
        x = v.patch_dropout(x)
        n = prompts[0].shape[0] if prompts else 0
        if n:
            x = torch.cat([x, prompts[0].to(x.dtype).expand(x.shape[0], -1, -1)], dim=1)
        x = v.ln_pre(x)

        def swap(i: int, x: torch.Tensor) -> torch.Tensor:
            if i == 0 or i >= len(prompts):
                return x
            p = prompts[i].to(x.dtype).expand(x.shape[0], -1, -1)
            return torch.cat([x[:, :-n], p], dim=1)

        x = self._run_blocks(v.transformer, x, None, swap)
        pooled, _ = v._pool(x[:, : x.shape[1] - n])
        return pooled @ v.proj if v.proj is not None else pooled
