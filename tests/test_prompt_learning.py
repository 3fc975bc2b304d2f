"""CoOp / CoCoOp prompt learners and the four prompt-learning methods (tiny open_clip backbone)."""

import pytest
import torch

from pyro_clip.errors import ConfigError, TrainingError
from pyro_clip.features.cache import FeatureSet
from pyro_clip.methods import MethodContext, create_method, known_methods
from pyro_clip.prompts.cocoop import CoCoOpPromptLearner
from pyro_clip.prompts.coop import CoOpPromptLearner

NAMES = ["t-shirt", "trousers", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
         "ankle boot"]


def _synthetic(backbone, n_per, classes, noise, seed):
    """Image features drawn around the zero-shot class embeddings: the prior knows every class."""
    w = backbone.zero_shot_weights(NAMES)
    g = torch.Generator().manual_seed(seed)
    y = torch.tensor(classes).repeat_interleave(n_per)
    return w[y] + noise * torch.randn(len(y), w.shape[1], generator=g), y


def _fit(backbone, method, x, y, names, work_dir=None, seed=0, **options):
    options.setdefault("augment", "none")
    m = create_method(method, **options)
    m.setup(MethodContext(backbone, seed=seed, work_dir=work_dir, progress=False))
    empty = FeatureSet({"joint": x[:0]}, y[:0], list(names), "val")
    m.fit(FeatureSet({"joint": x}, y, list(names), "train"), empty)
    return m


def test_methods_are_registered():
    assert {"coop", "cocoop", "coop-ove-pg", "cocoop-ove-pg"} <= set(known_methods())
    assert create_method("coop-ove-pg").options["lam"] == 0.2
    assert create_method("cocoop-ove-pg").options["lam"] == 0.1
    assert create_method("coop").options["likelihood"] == "softmax"


def test_coop_initialised_from_a_photo_of_a_equals_zero_shot_prompt(tiny_backbone):
    """Independent path: real tokens of "a photo of a {c}." through encode_text."""
    learner = CoOpPromptLearner(tiny_backbone, n_ctx=4, ctx_init="a photo of a")
    ref = tiny_backbone.zero_shot_weights(NAMES, ("a photo of a {}.",))
    torch.testing.assert_close(learner.text_features(NAMES).detach(), ref, atol=1e-5, rtol=0)


def test_ctx_init_length_mismatch_is_a_clear_error(tiny_backbone):
    with pytest.raises(ConfigError, match="is 4 tokens for this backbone but n_ctx=2; set n_ctx=4"):
        CoOpPromptLearner(tiny_backbone, n_ctx=2, ctx_init="a photo of a")


def test_class_specific_context_falls_back_to_zero_shot_for_unseen_classes(tiny_backbone):
    learner = CoOpPromptLearner(tiny_backbone, class_specific=True, class_names=NAMES[:3],
                                fallback=tiny_backbone.zero_shot_weights)
    assert learner.ctx.shape == (3, 4, tiny_backbone.ctx_dim)
    with torch.no_grad():
        learner.ctx.add_(torch.randn(learner.ctx.shape, generator=torch.Generator().manual_seed(0)))
    feats = learner.text_features(NAMES).detach()
    ref = tiny_backbone.zero_shot_weights(NAMES[3:])
    torch.testing.assert_close(feats[3:], ref, atol=1e-6, rtol=0)
    assert (feats[:3] - tiny_backbone.zero_shot_weights(NAMES[:3])).abs().max() > 1e-2


@pytest.mark.parametrize("method", ["coop-ove-pg", "cocoop-ove-pg", "coop", "cocoop"])
def test_gradients_reach_prompt_parameters_and_nothing_frozen(tiny_backbone, method):
    x, y = _synthetic(tiny_backbone, 2, list(range(4)), 0.1, 0)
    m = create_method(method)
    m.setup(MethodContext(tiny_backbone, seed=0, progress=False))
    learner = m.make_learner(NAMES[:4])
    from pyro_clip.models.ove_pg import ove_pg_loss

    f = learner.logits(x, NAMES[:4])
    if m.options["likelihood"] == "ove-pg":
        import numpy as np

        f0 = m.ctx.zero_shot_logits(x, NAMES[:4])
        ove_pg_loss(f, f0, y, m.ove, np.random.default_rng(0)).backward()
    else:
        torch.nn.functional.cross_entropy(f, y).backward()
    trainable = dict(learner.named_parameters())
    assert "ctx" in trainable and ("meta_net.0.weight" in trainable) == method.startswith("cocoop")
    for name, p in trainable.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    for p in tiny_backbone.parameters():
        assert not p.requires_grad and p.grad is None
    assert not any(k.startswith("backbone") for k in learner.state_dict())


def test_ove_pg_beats_softmax_on_new_classes_when_the_prior_knows_them(tiny_backbone):
    """Seeded synthetic base-to-new problem: the zero-shot prior classifies new classes well;
    softmax CoOp drifts its shared context on the base classes, OVE-PG's KL term anchors it."""
    xb, yb = _synthetic(tiny_backbone, 16, list(range(5)), 0.15, 0)
    xn, yn = _synthetic(tiny_backbone, 50, list(range(5, 10)), 0.15, 100)
    acc = {}
    for method in ("coop", "coop-ove-pg"):
        m = _fit(tiny_backbone, method, xb, yb, NAMES[:5], epochs=20, lr=0.05, batch_size=16)
        acc[method] = (m.predict(xn, NAMES[5:]).probs.argmax(1) == yn - 5).float().mean().item()
    zero_shot = (tiny_backbone.zero_shot_weights(NAMES[5:]) @ xn.T).argmax(0)
    assert (zero_shot == yn - 5).float().mean() > 0.9
    assert acc["coop-ove-pg"] > acc["coop"] + 0.1, acc


def test_fit_learns_base_classes_and_predicts_unseen_ones(tiny_backbone):
    xb, yb = _synthetic(tiny_backbone, 8, list(range(5)), 0.3, 1)
    xn, _ = _synthetic(tiny_backbone, 4, list(range(5, 10)), 0.3, 2)
    m = _fit(tiny_backbone, "cocoop-ove-pg", xb, yb, NAMES[:5], epochs=2, batch_size=8)
    pred = m.predict(xn, NAMES[5:])
    probs = pred.probs
    assert probs.shape == (20, 5)
    torch.testing.assert_close(probs.sum(1), torch.ones(20))
    assert len(m.history) == 2
    # one predictive: the probabilities are the mean softmax of the replicates' logit draws
    torch.testing.assert_close(probs.double(), pred.logit_samples.double().softmax(-1).mean(0),
                               atol=1e-6, rtol=0)


def test_state_dict_round_trip_reproduces_predictions(tiny_backbone):
    x, y = _synthetic(tiny_backbone, 4, list(range(4)), 0.2, 3)
    m = _fit(tiny_backbone, "coop", x, y, NAMES[:4], epochs=2, class_specific=True)
    fresh = create_method("coop", class_specific=True)
    fresh.setup(MethodContext(tiny_backbone, seed=0, progress=False))
    fresh.load_state_dict(m.state_dict())
    torch.testing.assert_close(fresh.predict(x, NAMES).probs, m.predict(x, NAMES).probs)


def test_same_seed_same_ove_pg_fit(tiny_backbone):
    x, y = _synthetic(tiny_backbone, 4, list(range(4)), 0.2, 4)
    a = _fit(tiny_backbone, "coop-ove-pg", x, y, NAMES[:4], epochs=2, seed=5)
    b = _fit(tiny_backbone, "coop-ove-pg", x, y, NAMES[:4], epochs=2, seed=5)
    torch.testing.assert_close(a.learner.ctx, b.learner.ctx, atol=0, rtol=0)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"alpha": 0.0}, "alpha"),
        ({"alpha": -2.0}, "alpha"),
        ({"lam": -0.5}, "lambda"),
        ({"num_samples": 0}, "num_samples"),
        ({"likelihood": "probit"}, "likelihood must be one of"),
        ({"lr": 0.0}, "lr must be a number > 0"),
    ],
)
def test_bad_options_are_rejected_with_a_clear_message(options, message):
    with pytest.raises(ConfigError, match=message):
        create_method("coop-ove-pg", **options)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_backbone, tmp_path, monkeypatch):
    import pyro_clip.methods.prompt_learning as pl

    calls = {"n": 0}
    real = pl.ove_pg_loss

    def nan_in_epoch_3(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] == 5 else loss

    monkeypatch.setattr(pl, "ove_pg_loss", nan_in_epoch_3)
    x, y = _synthetic(tiny_backbone, 4, list(range(4)), 0.2, 5)  # 16 examples, 2 steps/epoch
    with pytest.raises(TrainingError, match="loss became nan at epoch 3 step 1"):
        _fit(tiny_backbone, "coop-ove-pg", x, y, NAMES[:4], work_dir=tmp_path, epochs=4,
             batch_size=8, lr=0.05)
    saved = torch.load(tmp_path / "train_state.pt", weights_only=False)
    assert saved["epoch"] == 2 and torch.isfinite(saved["module"]["ctx"]).all()


def test_cocoop_context_depends_on_the_image(tiny_backbone):
    learner = CoCoOpPromptLearner(tiny_backbone)
    x = torch.randn(2, tiny_backbone.embed_dim)
    with torch.no_grad():
        a = learner.logits(x, NAMES)
        learner.meta_net[2].weight.zero_()
        learner.meta_net[2].bias.zero_()
        b = learner.logits(x, NAMES)
    coop = CoOpPromptLearner(tiny_backbone)
    torch.testing.assert_close(b, coop.logits(x, NAMES).detach(), atol=1e-4, rtol=0)
    assert (a - b).abs().max() > 1e-4
