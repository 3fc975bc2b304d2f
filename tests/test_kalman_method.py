"""The ``kalman`` method end to end (tiny random backbone, synthetic features)."""

from __future__ import annotations

import json

import pytest
import torch

from pyro_clip.cli import main
from pyro_clip.errors import ConfigError, DataError
from pyro_clip.features.cache import FeatureSet
from pyro_clip.methods import MethodContext, create_method
from tests.conftest import TINY

NAMES = ["cat", "dog", "car", "tree"]


def _synthetic(ctx, names, n_per_class=6, seed=0, noise=0.3):
    """Gaussian clusters around fixed random centres: learnable, unknown to zero-shot."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(
        torch.randn(len(NAMES), 64, generator=torch.Generator().manual_seed(99)), dim=-1)
    centres = centres[[NAMES.index(c) for c in names]]
    labels = torch.arange(len(names)).repeat_interleave(n_per_class)
    feats = centres[labels] + noise * torch.randn(len(labels), 64, generator=gen) / 8
    return FeatureSet({"joint": feats.float()}, labels, list(names), "synthetic")


@pytest.fixture
def ctx(tiny_backbone):
    return MethodContext(tiny_backbone, seed=3, progress=False)


def _fit(ctx, names=NAMES, **opts):
    opts = {"prior_var": 10.0, "temperature": 1.0, "prior_scale": ctx.backbone.logit_scale,
            **opts}
    m = create_method("kalman", **opts).setup(ctx)
    m.fit(_synthetic(ctx, names), _synthetic(ctx, names, 2, seed=1))
    return m


@pytest.mark.parametrize("cov", ["full", "block", "diag", "lowrank", "kron"])
def test_linear_head_learns_and_is_reproducible(ctx, cov):
    test = _synthetic(ctx, NAMES, 20, seed=2)
    m = _fit(ctx, covariance=cov, rank=4)
    pred = m.predict(test.features["joint"], NAMES)
    zero_shot = ctx.zero_shot_logits(test.features["joint"], NAMES).argmax(1)
    acc = (pred.probs.argmax(1) == test.labels).float().mean()
    assert acc > (zero_shot == test.labels).float().mean()
    assert pred.logit_samples.shape == (m.options["mc_samples"], len(test), 4)
    torch.testing.assert_close(pred.probs.sum(1), torch.ones(len(test)))
    again = _fit(ctx, covariance=cov, rank=4).predict(test.features["joint"], NAMES)
    torch.testing.assert_close(pred.probs, again.probs, rtol=0, atol=0)


def test_unseen_classes_keep_zero_shot_weights(ctx):
    m = _fit(ctx, names=NAMES[:2])
    x = _synthetic(ctx, NAMES, 3, seed=5).features["joint"]
    mean, var = m._logit_moments(x.double(), NAMES)
    zs = ctx.zero_shot_logits(x, NAMES).double()
    torch.testing.assert_close(mean[:, 2:], zs[:, 2:], atol=1e-5, rtol=1e-5)  # zs is float32
    assert not torch.allclose(mean[:, :2], zs[:, :2])
    # unseen classes: prior variance prior_var * |[x, 1]|^2 = 10 * 2 for unit-norm x
    torch.testing.assert_close(var[:, 2:], torch.full_like(var[:, 2:], 20.0))
    # prior_scale=auto: the prior's logits are the zero-shot ones times head_scale / s
    cooled = _fit(ctx, names=NAMES[:2], prior_scale="auto")
    mean, _ = cooled._logit_moments(x.double(), NAMES)
    ratio = cooled.head_scale / ctx.backbone.logit_scale
    assert cooled.selected["prior_scale"] == cooled.head_scale and 0 < ratio <= 1
    torch.testing.assert_close(mean[:, 2:], zs[:, 2:] * ratio, atol=1e-5, rtol=1e-5)


def test_probit_and_mc_predictives_are_close(ctx):
    test = _synthetic(ctx, NAMES, 10, seed=2).features["joint"]
    probit = _fit(ctx, predictive="probit").predict(test, NAMES).probs
    mc = _fit(ctx, predictive="mc", mc_samples=2000).predict(test, NAMES).probs
    # the probit (mean-field) approximation is less confident than MC; check it is close
    assert (probit - mc).abs().mean() < 0.05
    assert (probit.argmax(1) == mc.argmax(1)).float().mean() >= 0.95


@pytest.mark.parametrize("cov", ["full", "block", "diag", "lowrank", "kron"])
def test_one_predictive_agrees_with_a_large_monte_carlo_reference(ctx, cov):
    """predict()'s probabilities are the mean softmax of its own logit samples (the draws
    the PPC, LOO and OOD scores use); against a 20,000-draw Monte Carlo reference of the same
    posterior each probability is within 5 standard errors of a 1,000-draw mean
    (``sqrt(p (1 - p) / 1000)``) and the ECE within 0.01. (Accuracy can move by ~1 point on
    this deliberately noisy problem, whose near-tied examples flip: docs/kalman.md.)"""
    from pyro_clip.diagnostics.metrics import accuracy, expected_calibration_error
    from pyro_clip.inference.predictive import mc_probs

    test = _synthetic(ctx, NAMES, 250, seed=2, noise=2.0)
    x, y = test.features["joint"], test.labels
    m = _fit(ctx, covariance=cov, rank=4, temperature="auto")
    pred = m.predict(x, NAMES)
    torch.testing.assert_close(pred.probs, mc_probs(pred.logit_samples).float())
    ref = create_method("kalman", **{**m.options, "mc_samples": 20_000}).setup(ctx)
    ref.load_state_dict(m.state_dict())
    big = ref.predict(x, NAMES).probs
    se = (big.double() * (1 - big.double()) / m.options["mc_samples"]).sqrt()
    assert bool(((pred.probs.double() - big.double()).abs() <= 5 * se + 1e-4).all())
    assert abs(accuracy(pred.probs, y) - accuracy(big, y)) <= 0.015
    assert abs(expected_calibration_error(pred.probs, y)
               - expected_calibration_error(big, y)) <= 0.01


def test_temperature_and_prior_variance_are_chosen_on_validation_nll(ctx):
    """The selected (prior_var, T) pair has the smallest validation NLL of the table, and
    the grid is in units of the squared logit scale."""
    m = _fit(ctx, prior_var="auto", temperature="auto", prior_var_grid=[0.01, 0.1])
    table = m.selected["val_nll_by_prior_var_and_temperature"]
    s2 = ctx.backbone.logit_scale ** 2
    assert sorted(float(k) for k in table) == pytest.approx([0.01 * s2, 0.1 * s2])
    best = min((v, float(pv), float(t)) for pv, row in table.items() for t, v in row.items())
    assert (m.prior_var, m.temperature) == pytest.approx(best[1:])


def test_residual_adapter_and_cosine_observation(ctx):
    test = _synthetic(ctx, NAMES, 10, seed=2)
    for opts in ({"adapter": "residual", "covariance": "block", "residual_rank": 2},
                 {"observation": "cosine", "covariance": "diag"}):
        m = _fit(ctx, **opts)
        pred = m.predict(test.features["joint"], NAMES)
        assert torch.isfinite(pred.probs).all()
    assert m.selected["final_obs_noise"] != pytest.approx(0.05)  # adaptive R moved
    scores = m.ood_scores(test.features["joint"], NAMES)
    assert set(scores) == {"mahalanobis"}  # entropy and MI come from predict's Prediction
    assert scores["mahalanobis"].shape == (len(test),)
    assert bool((scores["mahalanobis"] >= 0).all())


def test_mahalanobis_gate_skips_outliers(ctx):
    train = _synthetic(ctx, NAMES)
    bad = FeatureSet({"joint": -train.features["joint"]}, train.labels, NAMES, "flipped")
    both = FeatureSet({"joint": torch.cat([train.features["joint"], bad.features["joint"][:2]])},
                      torch.cat([train.labels, bad.labels[:2]]), NAMES, "x")
    m = create_method("kalman", prior_var=0.01, observation="cosine", obs_noise=1e-4,
                      adaptive_noise=False).setup(ctx)
    m.fit(both, both)
    assert m.selected["gated_examples"] >= 2


def test_bad_input_is_rejected(ctx):
    m = _fit(ctx)
    x = torch.randn(3, 64)
    x[1, 5] = float("nan")
    with pytest.raises(DataError, match="NaN"):
        m.predict(x, NAMES)
    with pytest.raises(DataError, match="width 32"):
        m.predict(torch.randn(3, 32), NAMES)
    with pytest.raises(ConfigError, match="covariance="):
        create_method("kalman", covariance="sparse")
    with pytest.raises(ConfigError, match="adapter=linear"):
        create_method("kalman", covariance="kron", adapter="residual")
    with pytest.raises(ConfigError, match="batch_size"):
        create_method("kalman", batch_size=0)
    with pytest.raises(ConfigError, match="rank"):
        create_method("kalman", rank=0)
    with pytest.raises(ConfigError, match="prior_var"):
        create_method("kalman", prior_var=-1.0)


def test_auto_covariance_is_announced_recorded_and_reloads(ctx, capsys):
    """The default ``covariance=auto`` resolves to a structure (full for 4 classes x 65
    inputs), says so in one line, and a checkpoint without the choice (written before
    ``auto`` existed, when the default was full) reloads as full."""
    m = _fit(ctx)
    assert m.options["covariance"] == "full" and m.state_dict()["covariance"] == "full"
    assert capsys.readouterr().err.count("kalman: covariance=auto -> full") == 1
    legacy = {k: v for k, v in m.state_dict().items() if k != "covariance"}
    again = create_method("kalman", prior_var=10.0).setup(ctx)
    again.load_state_dict(legacy)
    assert again.options["covariance"] == "full"
    test = _synthetic(ctx, NAMES, 3, seed=2).features["joint"]
    torch.testing.assert_close(again.predict(test, NAMES).probs, m.predict(test, NAMES).probs)


def test_cli_output_contract_and_reload(tmp_path):
    out = tmp_path / "run"
    assert main(["fit", "--method", "kalman", "--backbone", TINY, "--shots", "2",
                 "--opt", "covariance=lowrank", "--opt", "rank=5", "--protocol", "base-to-new",
                 "--no-progress", "--no-eval-datasets", "--out", str(out)]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["resolved_options"]["covariance"] == "lowrank"
    assert "prior_var" in cfg["selected_hyperparameters"]
    assert (out / "checkpoint.pt").exists()
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 <= metrics["base_to_new"]["h"] <= 1
    ev = tmp_path / "ev"
    assert main(["evaluate", str(out), "--dataset", "fashion-mnist", "--out", str(ev)]) == 0
    assert json.loads((ev / "metrics.json").read_text())


def test_centred_inputs_keep_the_zero_shot_prior_and_reload(ctx, tmp_path):
    """x - mu with bias prior mean s t_c . mu: the prior logits are exactly zero-shot's."""
    from pyro_clip.inference.kalman_adapters import LinearHead

    gen = torch.Generator().manual_seed(0)
    text = torch.randn(4, 64, generator=gen, dtype=torch.float64)
    x = torch.randn(7, 64, generator=gen, dtype=torch.float64)
    mu = torch.nn.functional.normalize(x, dim=-1).mean(0)
    plain, centred = LinearHead(text, 30.0), LinearHead(text, 30.0, center=mu)
    torch.testing.assert_close(centred.logits(centred.prior_mean(), x, text),
                               plain.logits(plain.prior_mean(), x, text))
    m = _fit(ctx, covariance="diag", center_inputs=True)
    test = _synthetic(ctx, NAMES, 5, seed=2).features["joint"]
    again = create_method("kalman", prior_var=10.0, covariance="diag",
                          center_inputs=True).setup(ctx)
    again.load_state_dict(m.state_dict())
    torch.testing.assert_close(again.predict(test, NAMES).probs, m.predict(test, NAMES).probs)
    with pytest.raises(ConfigError, match="center_inputs"):
        create_method("kalman", center_inputs=True, bias=False)


@pytest.mark.parametrize("cov", ["kron", "block"])
def test_fitted_method_hands_back_its_posterior(ctx, cov):
    """``posterior()`` is over the (C, D+1) weights, centred on the filtered mean."""
    m = _fit(ctx, covariance=cov)
    post = m.posterior()
    assert tuple(post.event_shape) == (4, 65)
    fitted, to_original = m.state.mean.reshape(4, 65), m.adapter.to_original()
    # block is fitted on centred inputs (center_inputs=auto): the posterior is handed back
    # over the original weights [w, b] (tests/test_kalman_rotation.py)
    torch.testing.assert_close(post.mean,
                               fitted if to_original is None else fitted @ to_original.T)
    draws = post.rsample((3,))
    assert draws.shape == (3, 4, 65) and bool(torch.isfinite(post.log_prob(draws)).all())


@pytest.mark.parametrize("cov", ["full", "diag"])
def test_logit_moments_and_prior_match_their_weight_distributions(ctx, cov):
    """The logit prior and the linearised predictive moments against independent references:
    the prior mean is the zero-shot logits, and the predictive's moments are those of logits
    of weights drawn from ``posterior()`` (Monte Carlo, 20,000 draws: tolerances a few
    standard errors)."""
    m = _fit(ctx, covariance=cov)
    x = _synthetic(ctx, NAMES, 2, seed=7).features["joint"]
    prior = m.logit_prior(x, NAMES)
    torch.testing.assert_close(prior.mean, ctx.zero_shot_logits(x, NAMES).double(),
                               rtol=1e-5, atol=1e-5)  # float32 zero-shot reference
    inputs = m.adapter.inputs(x)
    torch.testing.assert_close(prior.variance, m.prior_var * (inputs**2).sum(1, keepdim=True)
                               .expand(-1, 4), rtol=1e-12, atol=0)
    mean, var = m._logit_moments(x.double(), NAMES)
    w = m.posterior(basis="fitted").sample((20_000,))  # (S, C, D+1), inputs' basis
    f = torch.einsum("np,scp->snc", inputs, w)
    sd = f.std(0)
    assert bool(((mean - f.mean(0)).abs() <= 5 * sd / 20_000**0.5 + 1e-9).all())
    torch.testing.assert_close(var.sqrt(), sd, rtol=0.05, atol=1e-9)
