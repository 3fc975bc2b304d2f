"""Sequential use of the ``kalman`` method: ``update`` (more labels, new classes, no refit)
and ``acquisition`` scores, against closed forms and brute-force dense references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import entropy as scipy_entropy

from pyro_clip.errors import ConfigError, DataError
from pyro_clip.features.cache import FeatureSet
from pyro_clip.inference.sequential import batch_order
from pyro_clip.methods import MethodContext, create_method

NAMES = ["cat", "dog", "car", "tree"]
STRUCTURES = ["full", "block", "diag", "lowrank", "kron"]
#: the cosine (linear-Gaussian) observation with everything data-dependent switched off
EXACT = {"observation": "cosine", "adaptive_noise": False, "gate": 0.0, "prior_var": 1.0,
         "obs_noise": 0.05, "center_inputs": False, "rotate_inputs": False,
         "prior_scale": 10.0}


def _synthetic(names, n_per_class=6, seed=0, noise=0.3):
    """Gaussian clusters around fixed random centres (one per name in NAMES)."""
    gen = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(len(NAMES), 64, generator=torch.Generator()
                                      .manual_seed(99)), dim=-1)
    centres = centres[[NAMES.index(c) for c in names]]
    labels = torch.arange(len(names)).repeat_interleave(n_per_class)
    feats = centres[labels] + noise * torch.randn(len(labels), 64, generator=gen) / 8
    return FeatureSet({"joint": feats.float()}, labels, list(names), "synthetic")


def _cat(a: FeatureSet, b: FeatureSet) -> FeatureSet:
    """Rows of ``a`` then ``b`` (same class list)."""
    assert a.classnames == b.classnames
    return FeatureSet({"joint": torch.cat([a.features["joint"], b.features["joint"]])},
                      torch.cat([a.labels, b.labels]), a.classnames, "a+b")


@pytest.fixture
def ctx(tiny_backbone):
    return MethodContext(tiny_backbone, seed=3, progress=False)


def _method(ctx, **opts):
    return create_method("kalman", **{"prior_var": 10.0, **opts}).setup(ctx)


@pytest.mark.parametrize("cov", ["full", "block"])
def test_cosine_fit_then_update_equals_one_pass_fit(ctx, cov):
    """Linear-Gaussian observation, fixed prior and noise: the posterior is order-free, so
    fit(A) + update(B) is fit(A + B) up to float64 round-off (full; block too, since each
    matched-logit observation touches one class block and the block posterior is exact)."""
    a, b = _synthetic(NAMES, 3, seed=0), _synthetic(NAMES, 4, seed=1)
    seq = _method(ctx, covariance=cov, **EXACT)
    seq.fit(a, a)
    seq.update(b)
    one = _method(ctx, covariance=cov, **EXACT)
    one.fit(_cat(a, b), a)
    torch.testing.assert_close(seq.state.mean, one.state.mean, rtol=0, atol=1e-10)
    torch.testing.assert_close(seq.state.cov.dense(), one.state.cov.dense(), rtol=0, atol=1e-12)


def _dense_ekf(mean, cov, inputs, labels):
    """Brute-force EKF on a softmax linear head, one example at a time, numpy float64:
    ``P+ = (P^-1 + J^T (diag p - p p^T) J)^-1``, ``m+ = m + P+ J^T (e_y - p)``."""
    c = len(mean) // inputs.shape[1]
    for x, y in zip(inputs, labels, strict=True):
        jac = np.kron(np.eye(c), x[None, :])  # (C, n)
        z = jac @ mean
        p = np.exp(z - z.max())
        p /= p.sum()
        fisher = jac.T @ (np.diag(p) - np.outer(p, p)) @ jac
        cov = np.linalg.inv(np.linalg.inv(cov) + fisher)
        mean = mean + cov @ jac.T @ (np.eye(c)[y] - p)
    return mean, cov


def test_categorical_update_is_the_next_ekf_steps(ctx):
    """Categorical EKF (order-dependent): fit(A) + update(B) equals the dense EKF run over A
    in the fit's order, then over B in the update's order (seed + 1)."""
    a, b = _synthetic(NAMES, 3, seed=0), _synthetic(NAMES, 2, seed=1)
    m = _method(ctx, covariance="full", batch_size=1, prior_var=2.0, iterations=1)
    m.fit(a, a)
    m.update(b)
    text = F.normalize(ctx.text_classifier(NAMES).double(), dim=-1)
    # prior mean: zero-shot rows at the prior's scale (prior_scale=auto, chosen at fit, kept)
    prior = torch.cat([m.head_scale * text, torch.zeros(4, 1, dtype=torch.float64)],
                      1).reshape(-1).numpy()

    def rows(fs):
        x = F.normalize(fs.features["joint"].double(), dim=-1)
        return torch.cat([x, torch.ones(len(x), 1, dtype=torch.float64)], 1).numpy()

    mean, cov = prior, 2.0 * np.eye(len(prior))
    for fs, seed in ((a, 3), (b, 4)):
        order = torch.cat(batch_order(len(fs), 1, 1, seed)).numpy()
        mean, cov = _dense_ekf(mean, cov, rows(fs)[order], fs.labels.numpy()[order])
    np.testing.assert_allclose(m.state.mean.numpy(), mean, rtol=0, atol=1e-9)
    np.testing.assert_allclose(m.state.cov.dense().numpy(), cov, rtol=0, atol=1e-11)
    assert m.selected["updates"] == [{"n_examples": len(b), "new_classes": [],
                                      "gated_examples": 0, "final_obs_noise": 0.05}]


@pytest.mark.parametrize("cov", STRUCTURES)
def test_save_load_then_update_is_identical(ctx, cov, tmp_path):
    """Defaults (centring/rotation/tempering auto, categorical): the checkpoint carries all
    an update needs, including the update counter that seeds the minibatch order."""
    a, b = _synthetic(NAMES, 3, seed=0), _synthetic(NAMES[:3], 2, seed=1)
    new = _synthetic(["tree"], 2, seed=2)
    m = _method(ctx, covariance=cov, rank=4)
    m.fit(a, a)
    m.update(b)
    torch.save(m.state_dict(), tmp_path / "state.pt")
    again = _method(ctx, covariance=cov, rank=4)
    again.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=False))
    for model in (m, again):
        model.update(new)
    test = _synthetic(NAMES, 3, seed=5).features["joint"]
    assert again.train_classnames == m.train_classnames
    torch.testing.assert_close(again.predict(test, NAMES).probs, m.predict(test, NAMES).probs,
                               rtol=0, atol=0)
    torch.testing.assert_close(again.state.cov.dense(), m.state.cov.dense(), rtol=0, atol=0)


@pytest.mark.parametrize("cov", ["full", "block", "diag"])
def test_new_class_under_cosine_leaves_old_classes_and_equals_one_pass(ctx, cov):
    """A class first seen in an update gets its zero-shot prior; under the cosine observation
    no earlier observation involves its weights, so the old classes' posterior is untouched
    and (full, block) the result equals a one-pass fit that had the class from the start.
    (lowrank's truncation and kron's shared input factor couple the classes: there the
    update moves the old classes' covariance too, as a one-pass fit of theirs would.)"""
    a, b = _synthetic(NAMES[:2], 3, seed=0), _synthetic(NAMES[2:], 3, seed=1)
    # the float32 text encoder's output depends on its batch (about 2e-7): one set of class
    # embeddings for the sequential model and the one-pass reference
    ctx._text_cache[tuple(NAMES)] = ctx.text_classifier(NAMES)
    ctx._text_cache[tuple(NAMES[:2])] = ctx.text_classifier(NAMES)[:2]
    m = _method(ctx, covariance=cov, rank=4, **EXACT)
    m.fit(a, a)
    old_mean, old_cov = m.state.mean.clone(), m.state.cov.dense()
    record = m.update(b)
    assert record["new_classes"] == ["car", "tree"] and m.train_classnames == NAMES
    n_old = len(old_mean)
    torch.testing.assert_close(m.state.mean[:n_old], old_mean, rtol=0, atol=0)
    torch.testing.assert_close(m.state.cov.dense()[:n_old, :n_old], old_cov, rtol=0,
                               atol=1e-12)
    if cov in ("full", "block"):
        both = FeatureSet({"joint": torch.cat([a.features["joint"], b.features["joint"]])},
                          torch.cat([a.labels, b.labels + 2]), NAMES, "a+b")
        one = _method(ctx, covariance=cov, **EXACT)
        one.fit(both, both)
        torch.testing.assert_close(m.state.mean, one.state.mean, rtol=0, atol=1e-10)
        torch.testing.assert_close(m.state.cov.dense(), one.state.cov.dense(), rtol=0,
                                   atol=1e-12)


def test_new_class_categorical_update_matches_dense_reference(ctx):
    """Categorical EKF, classes first seen in an update: dense reference of fit(A) over the
    old classes, the prior grown by ``s0 I`` rows, the EKF over B with all classes, then one
    Bernoulli step ``y in old`` per example of A: ``eta = lse(z_old) - lse(z_new)``,
    ``P+ = (P^-1 + q (1 - q) h^T h)^-1``, ``m+ = m + P+ h^T (1 - q)``, ``h = d eta/dz J``."""
    ctx._text_cache[tuple(NAMES)] = ctx.text_classifier(NAMES)
    ctx._text_cache[tuple(NAMES[:2])] = ctx.text_classifier(NAMES)[:2]
    a, b = _synthetic(NAMES[:2], 3, seed=0), _synthetic(NAMES[2:], 2, seed=1)
    m = _method(ctx, covariance="full", batch_size=1, prior_var=2.0, iterations=1)
    m.fit(a, a)
    m.update(b)
    s = m.head_scale  # the prior's scale (prior_scale=auto, kept by update)
    text = F.normalize(ctx.text_classifier(NAMES).double(), dim=-1)
    prior = torch.cat([s * text, torch.zeros(4, 1, dtype=torch.float64)], 1).numpy()

    def rows(fs):
        x = F.normalize(fs.features["joint"].double(), dim=-1)
        return torch.cat([x, torch.ones(len(x), 1, dtype=torch.float64)], 1).numpy()

    order = torch.cat(batch_order(len(a), 1, 1, 3)).numpy()
    mean, cov = _dense_ekf(prior[:2].reshape(-1), 2.0 * np.eye(2 * 65), rows(a)[order],
                           a.labels.numpy()[order])
    mean = np.concatenate([mean, prior[2:].reshape(-1)])
    cov = np.block([[cov, np.zeros((130, 130))], [np.zeros((130, 130)), 2.0 * np.eye(130)]])
    order = torch.cat(batch_order(len(b), 1, 1, 4)).numpy()
    mean, cov = _dense_ekf(mean, cov, rows(b)[order], b.labels.numpy()[order] + 2)
    for x in rows(a):  # seen_features in their stored order
        jac = np.kron(np.eye(4), x[None, :])
        z = jac @ mean
        old, new = np.exp(z[:2] - z[:2].max()), np.exp(z[2:] - z[2:].max())
        eta = (np.log(old.sum()) + z[:2].max()) - (np.log(new.sum()) + z[2:].max())
        h = np.concatenate([old / old.sum(), -new / new.sum()]) @ jac
        q = 1.0 / (1.0 + np.exp(-eta))
        cov = np.linalg.inv(np.linalg.inv(cov) + q * (1 - q) * np.outer(h, h))
        mean = mean + cov @ h * (1 - q)
    np.testing.assert_allclose(m.state.mean.numpy(), mean, rtol=0, atol=1e-8)
    np.testing.assert_allclose(m.state.cov.dense().numpy(), cov, rtol=0, atol=1e-10)


@pytest.mark.parametrize("cov", ["full", "block", "diag"])
def test_new_classes_are_learnt_and_old_ones_kept(ctx, cov):
    """Categorical defaults: after an update with two unseen classes they are predicted on
    their test images and the first two classes' accuracy does not collapse."""
    m = _method(ctx, covariance=cov)
    a = _synthetic(NAMES[:2], 4, seed=0)
    m.fit(a, a)
    test = _synthetic(NAMES, 20, seed=5)
    x, y = test.features["joint"], test.labels
    before = (m.predict(x, NAMES).probs.argmax(1) == y)[y < 2].float().mean()
    m.update(FeatureSet({"joint": _synthetic(NAMES, 3, seed=1).features["joint"][6:]},
                        torch.tensor([0, 0, 0, 1, 1, 1]), ["car", "tree"], "new"))
    assert m.train_classnames == NAMES
    hit = m.predict(x, NAMES).probs.argmax(1) == y
    assert hit[y >= 2].float().mean() >= 0.8
    assert hit[y < 2].float().mean() >= before - 0.15


def test_update_rejects_bad_input(ctx):
    m = _method(ctx)
    a = _synthetic(NAMES, 2)
    with pytest.raises(RuntimeError, match="fit"):
        m.update(a)
    m.fit(a, a)
    with pytest.raises(DataError, match="width 32"):
        m.update(FeatureSet({"joint": torch.randn(2, 32)}, torch.tensor([0, 1]), NAMES, "x"))
    with pytest.raises(DataError, match="no examples"):
        m.update(FeatureSet({"joint": torch.randn(0, 64)}, torch.tensor([], dtype=torch.long),
                            NAMES, "x"))
    with pytest.raises(ConfigError, match="score=entropy"):
        m.acquisition(a.features["joint"], score="margin")


# ----- acquisition -----------------------------------------------------------------------
def test_entropy_and_bald_read_the_posterior_predictive(ctx):
    """Entropy of ``predict``'s probabilities (scipy); BALD against an independent Monte
    Carlo estimate from 4,000 weight draws of ``posterior()`` (a few MC standard errors)."""
    m = _method(ctx, covariance="full", mc_samples=4000, prior_var=1.0)
    m.fit(_synthetic(NAMES, 2), _synthetic(NAMES, 2))
    pool = _synthetic(NAMES, 3, seed=4).features["joint"]
    probs = m.predict(pool, NAMES).probs.double().numpy()
    np.testing.assert_allclose(m.acquisition(pool, "entropy").numpy(),
                               scipy_entropy(probs, axis=1), rtol=1e-5, atol=1e-6)
    torch.manual_seed(0)
    w = m.posterior().sample((4000,))  # (S, C, D + 1) over the normalised features
    x = F.normalize(pool.double(), dim=-1)
    f = torch.einsum("nd,scd->snc", x, w[..., :-1]) + w[:, None, :, -1]
    p = torch.softmax(f / m.temperature, -1)  # the predictive's tempered draws, f_s / T
    ref = scipy_entropy(p.mean(0).numpy(), axis=1) - scipy_entropy(p.numpy(), axis=2).mean(0)
    bald = m.acquisition(pool, "bald").numpy()
    assert bald.min() >= 0
    np.testing.assert_allclose(bald, ref, atol=0.01 + 0.05 * ref.max())


@pytest.mark.parametrize("observation", ["categorical", "cosine"])
def test_variance_score_is_the_dense_posterior_variance_drop(ctx, observation):
    """``tr(J P J^T) - E tr(J P+ J^T)`` with ``P+`` from a dense one-example update:
    categorical ``(P^-1 + J^T F J)^-1`` (label-free), cosine ``P - P h^T h P / (h P h^T + R)``
    for the matched row ``h = e_y^T J / s``, averaged over ``y ~ predict``."""
    m = _method(ctx, covariance="full", observation=observation, prior_var=1.0)
    m.fit(_synthetic(NAMES, 2), _synthetic(NAMES, 2))
    pool = _synthetic(NAMES, 2, seed=4).features["joint"]
    score = m.acquisition(pool, "variance").numpy()
    cov, mean = m.state.cov.dense().numpy(), m.state.mean.numpy()
    x = F.normalize(pool.double(), dim=-1)
    rows = torch.cat([x, torch.ones(len(x), 1, dtype=torch.float64)], 1).numpy()
    probs = m.predict(pool, NAMES).probs.double().numpy()
    s = m.logit_scale  # the cosine observation's scale: the prior's (prior_scale)
    for i, xi in enumerate(rows):
        jac = np.kron(np.eye(4), xi[None, :])
        before = np.trace(jac @ cov @ jac.T)
        if observation == "categorical":
            z = jac @ mean
            p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
            post = np.linalg.inv(np.linalg.inv(cov) + jac.T @ (np.diag(p) - np.outer(p, p)) @ jac)
            expected = before - np.trace(jac @ post @ jac.T)
        else:
            expected = 0.0
            for y in range(4):
                h = jac[y] / s
                post = cov - np.outer(cov @ h, h @ cov) / (h @ cov @ h + m.obs_var)
                expected += probs[i, y] * (before - np.trace(jac @ post @ jac.T))
        np.testing.assert_allclose(score[i], expected, rtol=1e-6)


@pytest.mark.parametrize("cov", ["block", "diag", "lowrank", "kron"])
def test_variance_score_on_structures_matches_their_dense_covariance(ctx, cov):
    """Each structure's score equals the dense formula on that structure's own ``P``."""
    m = _method(ctx, covariance=cov, rank=4)
    m.fit(_synthetic(NAMES, 2), _synthetic(NAMES, 2))
    pool = _synthetic(NAMES, 1, seed=4).features["joint"]
    p_dense, mean = m.state.cov.dense().numpy(), m.state.mean.numpy()
    rows = m.adapter.inputs(pool).numpy()  # centred / rotated basis where the fit used one
    score = m.acquisition(pool, "variance").numpy()
    for i, xi in enumerate(rows):
        jac = np.kron(np.eye(4), xi[None, :])
        z = jac @ mean
        p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
        post = np.linalg.inv(np.linalg.inv(p_dense) + jac.T @ (np.diag(p) - np.outer(p, p)) @ jac)
        np.testing.assert_allclose(score[i], np.trace(jac @ (p_dense - post) @ jac.T), rtol=1e-6)


def test_residual_adapter_updates_and_adds_classes(ctx, tmp_path):
    """The class-agnostic residual adapter: no per-class weights to add, the old examples'
    'y in old classes' evidence still runs through its dense Jacobian; save/load identical."""
    m = _method(ctx, adapter="residual", covariance="block", residual_rank=2)
    a = _synthetic(NAMES[:3], 3, seed=0)
    m.fit(a, a)
    n_params = m.state.mean.numel()
    again = _method(ctx, adapter="residual", covariance="block", residual_rank=2)
    again.load_state_dict(m.state_dict())
    for model in (m, again):
        record = model.update(_synthetic(["tree"], 3, seed=1))
    assert record["new_classes"] == ["tree"] and m.state.mean.numel() == n_params
    test = _synthetic(NAMES, 3, seed=5).features["joint"]
    torch.testing.assert_close(again.predict(test, NAMES).probs, m.predict(test, NAMES).probs,
                               rtol=0, atol=0)
