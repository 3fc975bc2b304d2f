"""MaPLe's deep-prompt hooks, learner and methods on the tiny random open_clip ViT."""

import pytest
import torch

from pyro_clip.data import load_dataset
from pyro_clip.data.augment import AugmentedView
from pyro_clip.data.pixels import PixelRows
from pyro_clip.errors import ConfigError
from pyro_clip.methods import MethodContext, create_method
from pyro_clip.pipeline.config import RunConfig
from pyro_clip.prompts.maple import MaPLePromptLearner

NAMES = ["t-shirt", "trousers", "pullover", "dress", "coat"]


def _pixels(backbone, n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g)


def test_no_prompts_equal_the_plain_open_clip_forwards(tiny_backbone):
    x = _pixels(tiny_backbone)
    ref = tiny_backbone.model.encode_image(x)
    torch.testing.assert_close(tiny_backbone.encode_images_deep(x, []), ref, atol=1e-5, rtol=1e-5)
    tokens = tiny_backbone.tokenize([f"a photo of a {n}." for n in NAMES])
    emb = tiny_backbone.token_embeddings(tokens.ids)
    torch.testing.assert_close(tiny_backbone.encode_token_embeddings_deep(emb, tokens, []),
                               tiny_backbone.encode_token_embeddings(emb, tokens),
                               atol=1e-5, rtol=1e-5)


def test_visual_prompts_match_a_hooked_open_clip_forward(tiny_backbone):
    """Reference: open_clip's own encode_image with forward pre-hooks that append the shallow
    prompt before ln_pre and overwrite the last n tokens before block 1 (class token pooled)."""
    v = tiny_backbone.model.visual
    g = torch.Generator().manual_seed(1)
    p0, p1 = torch.randn(2, 64, generator=g), torch.randn(2, 64, generator=g)
    hooks = [
        v.ln_pre.register_forward_pre_hook(
            lambda m, a: (torch.cat([a[0], p0.expand(a[0].shape[0], -1, -1)], 1),)),
        v.transformer.resblocks[1].register_forward_pre_hook(
            lambda m, a: (torch.cat([a[0][:, :-2], p1.expand(a[0].shape[0], -1, -1)], 1),)),
    ]
    x = _pixels(tiny_backbone, seed=2)
    try:
        ref = tiny_backbone.model.encode_image(x)
    finally:
        for h in hooks:
            h.remove()
    torch.testing.assert_close(tiny_backbone.encode_images_deep(x, [p0, p1]), ref,
                               atol=1e-5, rtol=1e-5)
    assert (ref - tiny_backbone.model.encode_image(x)).abs().max() > 1e-3


def test_deep_text_prompts_match_a_hooked_text_forward(tiny_backbone):
    blocks = tiny_backbone._text["transformer"].resblocks
    deep = torch.randn(4, 64, generator=torch.Generator().manual_seed(3))
    hook = blocks[1].register_forward_pre_hook(
        lambda m, a, kw: ((torch.cat([a[0][:, :1], deep.expand(a[0].shape[0], -1, -1),
                                      a[0][:, 5:]], 1),), kw), with_kwargs=True)
    tokens = tiny_backbone.tokenize([f"a photo of a {n}." for n in NAMES])
    emb = tiny_backbone.token_embeddings(tokens.ids)
    try:
        ref = tiny_backbone.encode_token_embeddings(emb, tokens)
    finally:
        hook.remove()
    out = tiny_backbone.encode_token_embeddings_deep(emb, tokens, [deep])
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_learner_initialised_from_a_photo_of_a_gives_the_zero_shot_text(tiny_backbone):
    learner = MaPLePromptLearner(tiny_backbone, n_ctx=4, depth=1)
    ref = tiny_backbone.zero_shot_weights(NAMES, ("a photo of a {}.",))
    torch.testing.assert_close(learner.text_features(NAMES).detach(), ref, atol=1e-5, rtol=0)
    two = MaPLePromptLearner(tiny_backbone, n_ctx=2, depth=2)  # MaPLe: "a photo" learnable
    assert two.prompts(NAMES)[0].eot_index.tolist() == \
        tiny_backbone.tokenize([f"a photo of a {n}." for n in NAMES]).eot_index.tolist()


def test_gradients_reach_every_coupled_prompt_and_nothing_frozen(tiny_backbone):
    learner = MaPLePromptLearner(tiny_backbone, n_ctx=2, depth=2)
    logits = learner.logits(_pixels(tiny_backbone), NAMES)
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2])).backward()
    names = {n for n, _ in learner.named_parameters()}
    assert names == {"ctx", "proj.weight", "proj.bias", "text_deep.0", "proj_deep.0.weight",
                     "proj_deep.0.bias"}
    for n, p in learner.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, n
    assert all(not p.requires_grad and p.grad is None for p in tiny_backbone.parameters())


def test_conse_and_too_deep_prompts_are_refused(tiny_backbone, conse_backbone):
    with pytest.raises(ConfigError, match="MaPLe needs an open_clip ViT backbone"):
        create_method("maple").setup(MethodContext(conse_backbone))
    with pytest.raises(ConfigError, match=r"prompt_depth must be an integer in 1\.\.2"):
        create_method("maple").setup(MethodContext(tiny_backbone))  # paper depth 9 > 2 layers


def test_pixel_rows_augment_like_the_cached_views():
    images = load_dataset("fashion-mnist", "train")
    rows = PixelRows(images, lambda im: torch.as_tensor(list(im.getdata()), dtype=torch.float))
    sub = rows[torch.tensor([5, 2])]
    got = sub.load("crop-flip", [3, 0], seed=7)
    for r, (i, v) in enumerate([(5, 3), (2, 0)]):
        ref = AugmentedView(images, "crop-flip", v, 7).load_image(i)
        torch.testing.assert_close(got[r], torch.as_tensor(list(ref.getdata()), dtype=torch.float))


def test_maple_runs_end_to_end_and_reloads(tmp_path):
    from pyro_clip.pipeline.run import load_trained_method, run

    cfg = RunConfig(method="maple-ove-pg", backbone="open_clip:pyro-clip-tiny",
                    protocol="base-to-new", shots=1, eval_datasets=[], progress=False,
                    options={"prompt_depth": 2, "epochs": 1, "n_views": 2},
                    out=str(tmp_path / "run"))
    result = run(cfg)
    assert result.method.options["n_ctx"] == 4 and len(result.method.history) == 1
    assert 0.0 <= result.metrics["base_to_new"]["h"] <= 1.0
    again = load_trained_method(tmp_path / "run")
    new = result.evaluations["new"]
    # the same rows as the run predicted: the OVE-PG predictive's draws are seeded per call
    torch.testing.assert_close(again.predict(new.features, new.classnames).probs,
                               new.prediction.probs, atol=1e-6, rtol=1e-5)
