"""Baselines (linear probe, CLIP-Adapter, Tip-Adapter(-F), Laplace) against independent maths."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression

from pyro_clip.diagnostics.metrics import accuracy
from pyro_clip.errors import ConfigError
from pyro_clip.features.cache import FeatureSet
from pyro_clip.methods import MethodContext, create_method
from pyro_clip.methods._linear_head import fit_logistic
from pyro_clip.training.selection import grid, grid_search, log_grid

NAMES = ["cat", "dog", "car", "tree"]
NEW = ["ship", "house"]
FAST = {
    "linear-probe": {},
    "clip-adapter": {"epochs": 30, "lr": 5e-3, "augment": "none"},
    "tip-adapter": {"augment": "none"},
    "tip-adapter-f": {"epochs": 10, "augment": "none"},
    "laplace": {"n_samples": 16},
}


@pytest.fixture(scope="module")
def problem(tiny_backbone):
    """Seeded clusters whose means lean only weakly towards the class text embeddings.

    Zero-shot is weak but better than chance; 16 shots of well-separated clusters must beat it.
    """
    gen = torch.Generator().manual_seed(0)
    text = tiny_backbone.zero_shot_weights(NAMES + NEW).float()
    d = text.shape[1]
    means = F.normalize(0.25 * text + F.normalize(torch.randn(len(text), d, generator=gen), dim=-1),
                        dim=-1)

    def draw(per_class: int, classes: list[int]) -> FeatureSet:
        labels = torch.tensor(classes).repeat_interleave(per_class)
        x = means[labels] + 0.35 / math.sqrt(d) * torch.randn(len(labels), d, generator=gen)
        names = [(NAMES + NEW)[c] for c in classes]
        remap = {c: i for i, c in enumerate(classes)}
        return FeatureSet({"joint": x}, torch.tensor([remap[int(v)] for v in labels]), names, "syn")

    seen = list(range(len(NAMES)))
    return {"train": draw(16, seen), "val": draw(4, seen), "test": draw(50, seen),
            "new": draw(50, [4, 5])}


def _fit(name, backbone, problem, tmp_path=None, **options):
    m = create_method(name, **{**FAST[name], **options})
    m.setup(MethodContext(backbone, seed=1, work_dir=tmp_path, progress=False))
    m.fit(problem["train"], problem["val"])
    return m


def _zero_shot_probs(backbone, data):
    ctx = MethodContext(backbone)
    return ctx.zero_shot_logits(data.features["joint"], data.classnames).softmax(-1)


@pytest.mark.parametrize("name", sorted(FAST))
def test_beats_chance_and_zero_shot(name, tiny_backbone, problem, tmp_path):
    test = problem["test"]
    zs = accuracy(_zero_shot_probs(tiny_backbone, test), test.labels)
    m = _fit(name, tiny_backbone, problem, tmp_path)
    pred = m.predict(test.features["joint"], test.classnames)
    acc = accuracy(pred.probs, test.labels)
    assert acc > 1 / len(NAMES) + 0.3 and acc > zs + 0.15, (name, acc, zs)
    # float32 probabilities: compare in float32 with float32 tolerances (not after a float64 cast)
    torch.testing.assert_close(pred.probs.sum(-1), torch.ones(len(test), dtype=pred.probs.dtype))
    # new classes: methods with per-class state fall back to the zero-shot classifier; the
    # linear probe forms those logits in float64 and rounds once, the reference in float32
    new = problem["new"]
    if name in ("linear-probe", "tip-adapter", "tip-adapter-f"):
        got = m.predict(new.features["joint"], new.classnames).probs
        ref = _zero_shot_probs(tiny_backbone, new)
        assert got.dtype == ref.dtype == torch.float32
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


def test_tip_adapter_zero_alpha_is_zero_shot_exactly(tiny_backbone, problem):
    m = _fit("tip-adapter", tiny_backbone, problem, alpha=0.0, beta=5.0)
    test = problem["test"]
    assert torch.equal(m.predict(test.features["joint"], test.classnames).probs,
                       _zero_shot_probs(tiny_backbone, test))


def test_tip_adapter_logits_match_hand_computation(tiny_backbone, problem):
    alpha, beta = 2.0, 3.0
    m = _fit("tip-adapter", tiny_backbone, problem, alpha=alpha, beta=beta)
    train, test = problem["train"], problem["test"]
    x = test.features["joint"].double().numpy()[:7]
    k = train.features["joint"].double().numpy()
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    k /= np.linalg.norm(k, axis=1, keepdims=True)
    onehot = np.eye(len(NAMES))[train.labels.numpy()]
    text = tiny_backbone.zero_shot_weights(NAMES).double().numpy()
    s = tiny_backbone.logit_scale
    expect = s * x @ text.T + alpha * s / 100 * np.exp(-beta * (1 - x @ k.T)) @ onehot
    got = m.logits(test.features["joint"][:7], NAMES).double().numpy()
    np.testing.assert_allclose(got, expect, rtol=1e-4, atol=1e-4)


def test_tip_adapter_f_keys_move_and_search_records(tiny_backbone, problem, tmp_path):
    m = _fit("tip-adapter-f", tiny_backbone, problem, tmp_path)
    start = F.normalize(problem["train"].features["joint"], dim=-1)
    assert not torch.allclose(m.cache.keys, start)
    assert m.selected["searched"] and {"alpha", "beta", "val_accuracy"} <= set(m.selected)
    assert not (tmp_path / "train_state.pt").exists()  # removed once training finished


def _with_views(data: FeatureSet, views: list[torch.Tensor]) -> FeatureSet:
    from pyro_clip.features.views import view_key

    extra = {view_key("joint", v): t for v, t in enumerate(views)}
    return FeatureSet({**data.features, **extra}, data.labels, data.classnames, data.name)


def test_tip_adapter_keys_are_the_normalised_mean_of_the_augmented_views(tiny_backbone, problem):
    """Paper / official code: cache keys = normalise(mean over augment epochs of features)."""
    train = problem["train"]
    g = torch.Generator().manual_seed(3)
    x = train.features["joint"]
    views = [x + 0.3 * torch.randn(x.shape, generator=g) for _ in range(3)]
    m = create_method("tip-adapter", augment="crop-flip", n_views=3, alpha=1.0, beta=2.0)
    m.setup(MethodContext(tiny_backbone, seed=1, progress=False))
    m.fit(_with_views(train, views), problem["val"])
    mean = np.mean([v.double().numpy() for v in views], axis=0)
    expect = mean / np.linalg.norm(mean, axis=1, keepdims=True)
    np.testing.assert_allclose(m.cache.keys.double().numpy(), expect, rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="augment=none"):  # views missing: named fix
        m.fit(train, problem["val"])


def test_tip_adapter_f_on_identical_views_equals_no_augmentation(tiny_backbone, problem):
    """Queries are drawn from the views by their own generator: with every view equal to the
    image, fine-tuning is the un-augmented one (same minibatches, same updates); the keys'
    view mean (x + x + x) / 3 differs from x by float32 rounding only."""
    train = problem["train"]
    x = train.features["joint"]
    fitted = []
    for data, aug in ((train, "none"), (_with_views(train, [x, x, x]), "crop-flip")):
        m = create_method("tip-adapter-f", epochs=3, augment=aug, n_views=3)
        m.setup(MethodContext(tiny_backbone, seed=1, progress=False))
        m.fit(data, problem["val"])
        fitted.append(m)
    torch.testing.assert_close(fitted[1].cache.keys, fitted[0].cache.keys, rtol=1e-4, atol=1e-6)
    for key in ("alpha", "beta", "keys", "init_alpha", "init_beta"):
        assert fitted[1].selected[key] == fitted[0].selected[key]
    np.testing.assert_allclose(fitted[1].selected["train_loss"], fitted[0].selected["train_loss"],
                               rtol=1e-5)


def test_classic_probe_matches_scikit_learn(tiny_backbone, problem):
    train = problem["train"]
    x = F.normalize(train.features["joint"].double(), dim=-1)
    lam = 0.05
    w, b = fit_logistic(x, train.labels, torch.zeros(len(NAMES), x.shape[1]).double(), lam,
                        bias=True, tol=1e-10)
    ref = LogisticRegression(C=1 / (lam * len(x)), tol=1e-10, max_iter=10000)
    ref.fit(x.numpy(), train.labels.numpy())
    ours = (x @ w.T + b).softmax(-1).numpy()
    np.testing.assert_allclose(ours, ref.predict_proba(x.numpy()), atol=1e-5)


def test_zero_shot_centred_probe_tends_to_zero_shot(tiny_backbone, problem):
    test = problem["test"]
    m = _fit("linear-probe", tiny_backbone, problem, lam=1e6)
    torch.testing.assert_close(m.predict(test.features["joint"], NAMES).probs,
                               _zero_shot_probs(tiny_backbone, test), atol=1e-4, rtol=0)


def test_laplace_full_matches_brute_force_posterior(tiny_backbone, problem):
    """GLM predictive with the 'full' GGN = J (H + P I)^-1 J^T, H the autograd Hessian of the
    summed cross-entropy at the MAP (the GGN equals the Hessian for a linear softmax head)."""
    train = problem["train"]
    m = _fit("laplace", tiny_backbone, problem, hessian_structure="full", prior_precision=3.0,
             lam=0.05, n_samples=4000, temperature=1.0)
    x = F.normalize(train.features["joint"].double(), dim=-1)
    w_map = m.weight.clone()
    c, d = w_map.shape

    def nll(flat):
        return F.cross_entropy(x @ flat.reshape(c, d).T, train.labels, reduction="sum")

    h = torch.autograd.functional.hessian(nll, w_map.flatten())
    sigma = torch.linalg.inv(h + 3.0 * torch.eye(c * d, dtype=torch.float64))
    xt = F.normalize(problem["test"].features["joint"][:5].double(), dim=-1)
    jac = torch.stack([torch.kron(torch.eye(c, dtype=torch.float64), xi[None]) for xi in xt])
    expect_cov = jac @ sigma @ jac.transpose(1, 2)
    mean, cov = m.predictive(problem["test"].features["joint"][:5], [*NAMES, "ship"])
    torch.testing.assert_close(mean[:, :c], xt @ w_map.T)
    torch.testing.assert_close(cov[:, :c, :c], expect_cov, rtol=1e-6, atol=1e-9)
    # the untrained class: prior row N(s t_c, I/P), so mean = zero-shot logit, var = |x|^2/P
    zs = tiny_backbone.logit_scale * xt @ tiny_backbone.zero_shot_weights(["ship"]).double().T
    # float32 text weights encoded in a batch vs alone: float32 round-off, times the scale
    torch.testing.assert_close(mean[:, c:], zs, rtol=1e-5, atol=1e-6 * tiny_backbone.logit_scale)
    torch.testing.assert_close(cov[:, c, c], torch.full((5,), 1 / 3.0, dtype=torch.float64))
    assert torch.all(cov[:, c, :c] == 0)
    # logit samples carry the predictive moments (Monte Carlo, 4000 draws)
    pred = m.predict(problem["test"].features["joint"][:5], [*NAMES, "ship"])
    s = pred.logit_samples.double()
    assert s.shape == (4000, 5, c + 1)
    torch.testing.assert_close(s.mean(0), mean, atol=4 * cov.diagonal(dim1=1, dim2=2).max().sqrt()
                               / math.sqrt(4000), rtol=0)
    torch.testing.assert_close(s.var(0), cov.diagonal(dim1=1, dim2=2), rtol=0.15, atol=1e-6)


def test_laplace_probit_equals_laplace_torch(tiny_backbone, problem):
    m = _fit("laplace", tiny_backbone, problem, lam=0.05, prior_precision="marglik",
             predictive="probit", temperature=1.0)
    xt = problem["test"].features["joint"][:20]
    ours = m.predict(xt, NAMES).probs.double()
    ref = m.la(F.normalize(xt.double(), dim=-1), pred_type="glm", link_approx="probit")
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)
    assert m.selected["prior_precision_tuning"] == "marglik" and m.selected["prior_precision"] > 0


def test_search_helpers():
    assert grid(a=[1, 2], b=[3]) == [{"a": 1, "b": 3}, {"a": 2, "b": 3}]
    np.testing.assert_allclose(log_grid(1e-2, 1e2, 5), [1e-2, 1e-1, 1, 10, 100])
    # ties keep the first candidate; NLL breaks accuracy ties
    res = grid_search(grid(a=[0, 1, 2]), lambda c: (0.5, -abs(c["a"] - 1) if c["a"] else -1.0))
    assert res.best == {"a": 1} and len(res.table) == 3
    with pytest.raises(ConfigError, match="empty"):
        grid(a=[])


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("linear-probe", {"center": "mean"}, "center must be one of"),
        ("linear-probe", {"lam": -1}, r"lam must be one of null \| a number > 0"),
        ("tip-adapter", {"beta_grid": []}, "beta_grid must be a non-empty list"),
        ("laplace", {"hessian_structure": "lowrank"}, "hessian_structure must be one of"),
        ("laplace", {"prior_precision": "cv"}, "prior_precision must be one of"),
        ("clip-adapter", {"ratio": 1.5}, r"ratio must be a number in \[0, 1\]"),
    ],
)
def test_bad_options_name_the_fix(name, options, message, tiny_backbone, problem):
    with pytest.raises(ConfigError, match=message):
        _fit(name, tiny_backbone, problem, **options)


def test_tip_adapter_f_starts_from_the_training_free_choice_and_never_loses_on_val(
        tiny_backbone, problem):
    """Fine-tuning starts at the alpha/beta training-free Tip-Adapter picks on validation, and
    the final search includes the un-fine-tuned keys, so validation can only improve."""
    tip = _fit("tip-adapter", tiny_backbone, problem)
    tipf = _fit("tip-adapter-f", tiny_backbone, problem)
    assert (tipf.selected["init_alpha"], tipf.selected["init_beta"]) == (
        tip.selected["alpha"], tip.selected["beta"])
    assert tipf.selected["keys"] in ("fine-tuned", "initial")
    assert (tipf.selected["val_accuracy"], -tipf.selected["val_nll"]) >= (
        tip.selected["val_accuracy"], -tip.selected["val_nll"])
    fixed = _fit("tip-adapter-f", tiny_backbone, problem, init_alpha=1.0, init_beta=1.0)
    assert (fixed.selected["init_alpha"], fixed.selected["init_beta"]) == (1.0, 1.0)


def test_tip_adapter_f_leave_one_out_hides_each_query_s_own_key(tiny_backbone, problem):
    """With leave_one_out the training loss equals the cache logits without the self term."""
    m = create_method("tip-adapter-f", **{**FAST["tip-adapter-f"], "epochs": 1,
                                          "leave_one_out": True, "alpha": 1.0, "beta": 1.0,
                                          "init_alpha": 2.0, "init_beta": 3.0, "lr": 1e-12})
    m.setup(MethodContext(tiny_backbone, seed=1, progress=False))
    m.fit(problem["train"], problem["val"])
    train = problem["train"]
    x = F.normalize(train.features["joint"].double(), dim=-1)
    aff = torch.exp(-3.0 * (1 - x @ x.T))
    aff.fill_diagonal_(0)
    zs = _zero_shot_probs(tiny_backbone, train)  # softmax of s cos(x, T)
    logits = zs.double().log() + 2.0 * tiny_backbone.logit_scale / 100 * aff @ F.one_hot(
        train.labels).double()
    ref = F.cross_entropy(logits, train.labels).item()
    # one epoch at lr 1e-12 is the loss at the initial keys, averaged over minibatches
    assert m.selected["train_loss"][0] == pytest.approx(ref, rel=1e-5)
