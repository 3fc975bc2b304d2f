"""``covariance=kron`` against exact posteriors (where the Kronecker form is exact) and
laplace-torch's Kronecker last-layer Laplace."""

from __future__ import annotations

import math

import pytest
import torch

from pyro_clip.errors import ConfigError
from pyro_clip.inference.covariance import FullCovariance, make_covariance
from pyro_clip.inference.covariance.kron import KronCovariance
from pyro_clip.inference.kalman import KalmanState
from pyro_clip.inference.kalman_jacobian import CategoricalKronJacobian, KronJacobian

C, P = 3, 4


#: references are computed in float64 (fixture in conftest restores the default after)
pytestmark = pytest.mark.usefixtures("float64_default")


def _x(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, P, generator=g), g


def test_categorical_whitening_matches_dense_mix():
    x, g = _x(5)
    probs = torch.softmax(torch.randn(5, C, generator=g), -1)
    lazy = KronJacobian.logits(x, C).whiten_categorical(probs)
    assert isinstance(lazy, CategoricalKronJacobian)
    eye = torch.eye(C)
    dense = KronJacobian.logits(x, C).mix(probs.sqrt().unsqueeze(-1) * (eye - probs.unsqueeze(-2)))
    torch.testing.assert_close(lazy.dense(), dense.dense())
    fisher = torch.diag_embed(probs) - probs.unsqueeze(-1) * probs.unsqueeze(-2)
    torch.testing.assert_close(lazy.class_information(), fisher.sum(0))
    u = torch.randn(C, 2, generator=g)
    torch.testing.assert_close(lazy.coef_mm(u), lazy.coef @ u)


@pytest.mark.parametrize("mean_step", ["natural", "kalman"])
def test_isotropic_gaussian_observations_give_the_exact_posterior(mean_step):
    """Every logit observed with the same noise r: F_b = I / r for all b, so the Kronecker
    product is exact and kron equals the full filter (= Bayesian linear regression)."""
    x, g = _x(30)
    w_true = torch.randn(C, P, generator=g)
    y = x @ w_true.T + 0.4 * torch.randn(30, C, generator=g)
    m0 = torch.randn(C * P, generator=g)
    states = [KalmanState(m0, FullCovariance(C * P, 2.0)),
              KalmanState(m0, KronCovariance(C, P, 2.0, mean_step=mean_step))]
    for state in states:
        for idx in torch.arange(30).split(7):
            h = KronJacobian.logits(x[idx], C)
            resid = y[idx].reshape(-1) - h.mm(state.mean[:, None])[:, 0]
            state.update_gaussian(h, torch.full((h.n_obs,), 0.16), resid)
    full, kron = states
    torch.testing.assert_close(kron.cov.dense(), full.cov.dense(), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(kron.mean, full.mean, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("mean_step", ["natural", "kalman"])
def test_single_input_direction_categorical_ekf_equals_full(mean_step):
    """All examples share x: sum_b F_b kron x x^T = (sum_b F_b) kron x x^T exactly, so the
    kron EKF (mean and covariance) equals the full EKF step for step."""
    x, g = _x(1)
    x = x.expand(12, P)
    labels = torch.randint(0, C, (12,), generator=g)
    m0 = 0.3 * torch.randn(C * P, generator=g)
    states = [KalmanState(m0, FullCovariance(C * P, 1.5)),
              KalmanState(m0, KronCovariance(C, P, 1.5, mean_step=mean_step))]
    for state in states:
        for idx in torch.arange(12).split(4):
            w = state.mean.reshape(C, P)
            state.update_categorical(KronJacobian.logits(x[idx], C), x[idx] @ w.T, labels[idx])
    full, kron = states
    torch.testing.assert_close(kron.cov.dense(), full.cov.dense(), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(kron.mean, full.mean, rtol=1e-9, atol=1e-10)


def _categorical_batches(n=12, seed=3):
    x, g = _x(n, seed)
    return x, torch.randint(0, C, (n,), generator=g), 0.3 * torch.randn(C * P, generator=g)


def test_kalman_mean_step_is_the_ekf_step_with_the_kronecker_prior():
    """``mean_step=kalman`` against a dense reference: ``delta = (P^-1 + H^T H)^-1 g`` with P
    the dense Kronecker covariance *before* the minibatch; on the first minibatch (prior
    tau^-1 I, exact) that is the full filter's step, for inputs where K-FAC is not exact."""
    x, labels, m0 = _categorical_batches()
    full = KalmanState(m0, FullCovariance(C * P, 1.5))
    kron = KalmanState(m0, KronCovariance(C, P, 1.5, mean_step="kalman"))
    for step, idx in enumerate(torch.arange(12).split(4)):
        w = kron.mean.reshape(C, P)
        logits = x[idx] @ w.T
        jac = KronJacobian.logits(x[idx], C)
        probs = torch.softmax(logits, -1)
        g = jac.tmm((torch.nn.functional.one_hot(labels[idx], C) - probs).reshape(-1, 1))[:, 0]
        hw = jac.whiten_categorical(probs).dense()
        expected = kron.mean + torch.linalg.solve(
            torch.linalg.inv(kron.cov.dense()) + hw.T @ hw, g)
        if step == 0:
            full.update_categorical(jac, logits, labels[idx])
            torch.testing.assert_close(expected, full.mean, rtol=1e-10, atol=1e-12)
        kron.update_categorical(jac, logits, labels[idx])
        torch.testing.assert_close(kron.mean, expected, rtol=1e-9, atol=1e-11)


def test_auto_mean_step_switches_to_natural_beyond_the_innovation_limit(monkeypatch):
    import pyro_clip.inference.covariance.kron as kron_module

    x, labels, m0 = _categorical_batches()
    means = {}
    cases = (("kalman", 10**9), ("natural", 10**9), ("auto", 4 * C), ("auto", 4 * C - 1))
    for step, limit in cases:
        monkeypatch.setattr(kron_module, "KALMAN_STEP_MAX_OBS", limit)
        state = KalmanState(m0, make_covariance("kron", C * P, 1.5, n_blocks=C,
                                                kron_mean_step=step))
        for idx in torch.arange(12).split(4):
            w = state.mean.reshape(C, P)
            state.update_categorical(KronJacobian.logits(x[idx], C), x[idx] @ w.T, labels[idx])
        means[(step, limit)] = state.mean
    assert float((means[("kalman", 10**9)] - means[("natural", 10**9)]).abs().max()) > 1e-6
    torch.testing.assert_close(means[("auto", 4 * C)], means[("kalman", 10**9)], rtol=0, atol=0)
    torch.testing.assert_close(means[("auto", 4 * C - 1)], means[("natural", 10**9)],
                               rtol=0, atol=0)
    with pytest.raises(ConfigError, match="mean_step"):
        KronCovariance(C, P, 1.0, mean_step="exact")


def test_structured_products_match_dense_covariance():
    x, g = _x(6)
    cov = KronCovariance(C, P, 0.7)
    probs = torch.softmax(torch.randn(6, C, generator=g), -1)
    cov.update(KronJacobian.logits(x, C).whiten_categorical(probs), torch.zeros(C * P))
    dense = cov.dense()
    torch.testing.assert_close(dense, dense.T)
    assert bool((torch.linalg.eigvalsh(dense) > 0).all())
    logit_jac = KronJacobian.logits(x[:2], C)
    for h in (logit_jac, logit_jac.whiten_categorical(probs[:2]),
              KronJacobian(torch.randn(2, 2, C, generator=g), x[:2])):
        hd = h.dense()
        torch.testing.assert_close(cov.quad(h), hd @ dense @ hd.T)
        torch.testing.assert_close(cov.var(h), (hd @ dense @ hd.T).diagonal())
    v = torch.randn(C * P, generator=g)
    torch.testing.assert_close(cov.mv(v), dense @ v)
    torch.testing.assert_close(cov.diagonal(), dense.diagonal())
    torch.testing.assert_close(cov.log_det(), torch.logdet(dense))
    draws = cov.sample(40000, torch.Generator().manual_seed(1))
    emp = draws.T @ draws / len(draws)
    # Monte Carlo: entries of the sample covariance have sd ~ sqrt(2/S) * scale
    assert (emp - dense).abs().max() < 6 * math.sqrt(2 / 40000) * dense.diagonal().max()


def test_forgetting_scales_the_precision():
    x, _ = _x(5)
    cov = KronCovariance(C, P, 1.0)
    cov.update(KronJacobian.logits(x, C).scale_rows(torch.full((5 * C,), 2.0)), torch.zeros(C * P))
    before = cov.dense()
    cov.predict(forgetting=0.8)
    torch.testing.assert_close(cov.dense(), before / 0.8)
    with pytest.raises(ConfigError, match="forgetting only"):
        cov.predict(noise=0.1)


def test_batch_fit_equals_laplace_torch_kron_last_layer():
    """One batch update from W0 with all data adds exactly laplace-torch's KFLR Kronecker GGN
    ((sum_n F_n) kron (1/N sum_n x_n x_n^T)) at W0, and the prior precision is added exactly
    in both (``KronDecomposed`` without damping): precisions agree to float64 round-off."""
    laplace = pytest.importorskip("laplace")
    from torch.utils.data import DataLoader, TensorDataset

    n, d = 25, P - 1
    g = torch.Generator().manual_seed(3)
    x = torch.cat([torch.randn(n, d, generator=g), torch.ones(n, 1)], 1)
    y = torch.randint(0, C, (n,), generator=g)
    w0 = torch.randn(C, P, generator=g)
    model = torch.nn.Sequential(torch.nn.Identity(), torch.nn.Linear(P, C, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(w0)
    la = laplace.KronLLLaplace(model, "classification", prior_precision=0.5)
    la.fit(DataLoader(TensorDataset(x, y), batch_size=n))
    ref = la.posterior_precision.to_matrix()

    state = KalmanState(w0.reshape(-1), KronCovariance(C, P, 1 / 0.5))
    state.update_categorical(KronJacobian.logits(x, C), x @ w0.T, y)
    torch.testing.assert_close(torch.linalg.inv(state.cov.dense()), ref, rtol=1e-10, atol=1e-12)


def test_load_state_dict_copies_and_resumes():
    x, _ = _x(8)
    cov = KronCovariance(C, P, 1.0)
    cov.update(KronJacobian.logits(x, C), torch.zeros(C * P))
    saved = {k: v.clone() for k, v in cov.state_dict().items()}
    other = KronCovariance(C, P, 1.0)
    other.load_state_dict(saved)
    torch.testing.assert_close(other.dense(), cov.dense())
    other.update(KronJacobian.logits(x, C), torch.zeros(C * P))
    torch.testing.assert_close(saved["a_sum"], cov.state_dict()["a_sum"])


def test_kron_needs_a_kronecker_jacobian_and_memory_is_checked():
    from pyro_clip.inference.kalman_jacobian import DenseJacobian

    cov = make_covariance("kron", C * P, 1.0, n_blocks=C)
    with pytest.raises(ConfigError, match="adapter=linear"):
        cov.var(DenseJacobian(torch.randn(2, C * P)))
    with pytest.raises(ConfigError, match="covariance=kron"):
        make_covariance("full", 1000 * 513, 1.0, n_blocks=1000)
    big = make_covariance("kron", 1000 * 513, 1.0, n_blocks=1000)
    assert big.memory_bytes() < 100 * 2**20
