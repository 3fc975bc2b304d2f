"""KgCoOp: the knowledge-guidance term against scipy, w = 0 is CoOp, w > 0 stays near the prior."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.spatial.distance import cosine

from pyro_clip.errors import ConfigError
from pyro_clip.features.cache import FeatureSet
from pyro_clip.methods import MethodContext, create_method
from pyro_clip.methods.kgcoop import knowledge_guidance

NAMES = ["t-shirt", "trousers", "pullover", "dress", "coat"]


def _data(backbone, n_per=4, seed=0):
    w = backbone.zero_shot_weights(NAMES)
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(len(NAMES)).repeat_interleave(n_per)
    return FeatureSet({"joint": w[y] + 0.3 * torch.randn(len(y), w.shape[1], generator=g)},
                      y, NAMES, "train")


def _fit(backbone, method, data, **options):
    m = create_method(method, augment="none", epochs=3, batch_size=8, lr=0.05, **options)
    m.setup(MethodContext(backbone, seed=2, progress=False))
    m.fit(data, FeatureSet({"joint": data.features["joint"][:0]}, data.labels[:0], NAMES, "v"))
    return m


def test_knowledge_guidance_is_the_mean_scipy_cosine_distance():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(6, 16, generator=g), torch.randn(6, 16, generator=g)
    ref = np.mean([cosine(a[i].numpy(), b[i].numpy()) for i in range(6)])
    torch.testing.assert_close(knowledge_guidance(a, b), torch.tensor(ref, dtype=torch.float32),
                               atol=1e-6, rtol=1e-5)
    # the paper's squared distance of normalised embeddings is twice the official 1 - cos
    sq = (F.normalize(a, dim=-1) - F.normalize(b, dim=-1)).pow(2).sum(-1).mean()
    torch.testing.assert_close(sq, 2 * knowledge_guidance(a, b), atol=1e-5, rtol=1e-5)


def test_w_zero_is_coop_and_w_positive_stays_closer_to_the_hand_crafted_text(tiny_backbone):
    data = _data(tiny_backbone)
    coop = _fit(tiny_backbone, "coop", data)
    zero = _fit(tiny_backbone, "kgcoop", data, w=0.0)
    torch.testing.assert_close(zero.learner.ctx, coop.learner.ctx, atol=1e-6, rtol=1e-5)
    strong = _fit(tiny_backbone, "kgcoop", data, w=50.0)
    ref = tiny_backbone.zero_shot_weights(NAMES)
    with torch.no_grad():
        drift = {k: float(knowledge_guidance(m.learner.text_features(NAMES), ref))
                 for k, m in (("coop", coop), ("kgcoop", strong))}
    assert drift["kgcoop"] < 0.5 * drift["coop"], drift


def test_kgcoop_defaults_and_bad_w():
    m = create_method("kgcoop")
    assert m.options["w"] == 8.0 and m.options["n_ctx"] == 4 and m.options["augment"] == "crop-flip"
    with pytest.raises(ConfigError, match=r"w=8\.0"):
        create_method("kgcoop", w=-1.0)
