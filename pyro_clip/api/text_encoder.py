"""The class-text side of a dual encoder, built from given class embeddings (no backbone).

Weight-space methods (kalman, laplace, linear-probe, tip-adapter(-f), clip-adapter,
zero-shot) use a backbone only through its zero-shot classifier ``t_c`` and logit scale ``s``
(prior mean ``s T``, zero-shot logits ``s cos(x, t_c)``; CLIP, Radford et al. 2021). Given
``Features.text`` those are known, so :class:`ClassTextEncoder` stands in for the backbone in
:class:`~pyro_clip.methods.MethodContext`; anything that needs the towers themselves (prompt
learners, image encoding) is refused with an error naming the fix.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from pyro_clip.errors import ConfigError, DataError
from pyro_clip.runtime import CPU, Runtime

#: CLIP's learned temperature, ``exp(4.6052)`` = 100 (Radford et al. 2021)
CLIP_LOGIT_SCALE = 100.0


class ClassTextEncoder:
    """Class embeddings by name (rows normalised) and a logit scale; no image or text tower.

    >>> enc = ClassTextEncoder(["cat", "dog"], torch.eye(2), logit_scale=10.0)
    >>> enc.zero_shot_weights(["dog"]).tolist(), enc.logit_scale
    ([[0.0, 1.0]], 10.0)
    """

    name = "class-text"
    runtime: Runtime = CPU

    def __init__(self, classnames: Sequence[str], text: torch.Tensor,
                 logit_scale: float = CLIP_LOGIT_SCALE) -> None:
        if not logit_scale > 0:
            raise ConfigError(f"logit_scale must be > 0 (CLIP: 100), got {logit_scale}")
        self._scale = float(logit_scale)
        self._rows: dict[str, torch.Tensor] = {}
        self.embed_dim = int(text.shape[1])
        self.add(classnames, text)

    @property
    def logit_scale(self) -> float:
        return self._scale

    def add(self, classnames: Sequence[str], text: torch.Tensor) -> None:
        """Register more class rows; a class already known must keep the same embedding."""
        if text.ndim != 2 or text.shape != (len(classnames), self.embed_dim):
            raise DataError(f"text must be (C, {self.embed_dim}) with one row per class name, "
                            f"got {tuple(text.shape)} for {len(classnames)} names")
        rows = F.normalize(text.detach().float().cpu(), dim=-1)
        for name, row in zip(classnames, rows, strict=True):
            known = self._rows.get(name)
            if known is not None and not torch.allclose(known, row, atol=1e-6):
                raise DataError(f"class {name!r} was given two different text embeddings; "
                                "pass the same Features.text row for a class everywhere")
            self._rows[name] = row

    def zero_shot_weights(self, classnames: Sequence[str],
                          templates: Sequence[str] = ()) -> torch.Tensor:
        """(C, D) normalised class embeddings; ``templates`` do not apply (rows are given)."""
        missing = [c for c in classnames if c not in self._rows]
        if missing:
            raise DataError(f"no text embedding for class(es) {missing}; pass Features with "
                            "text=... rows for them (known: " + ", ".join(self._rows) + ")")
        return torch.stack([self._rows[c] for c in classnames])

    def fingerprint(self) -> str:
        """Hash of the logit scale and every class row (identifies the prior)."""
        h = hashlib.sha256(f"class-text:scale={self._scale}".encode())
        for name in sorted(self._rows):
            h.update(name.encode())
            h.update(self._rows[name].numpy().tobytes())
        return h.hexdigest()

    def feature_fingerprint(self) -> str:
        return self.fingerprint()

    def _no_tower(self, *args: object, **kwargs: object) -> None:
        raise ConfigError("this model was fitted from class text embeddings without a backbone, "
                          "so it cannot encode images or prompts; pass "
                          "backbone=pyro_clip.load_backbone(...)")

    encode_images = tokenize = token_embeddings = encode_token_embeddings = _no_tower
    preprocess = encode_text = _no_tower
