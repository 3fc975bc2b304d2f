"""Kalman filter maths against independent references (dense linear algebra, autograd)."""

from __future__ import annotations

import math

import pytest
import torch

from pyro_clip.inference.covariance import (
    COVARIANCES,
    BlockCovariance,
    CovarianceWarning,
    DiagCovariance,
    FullCovariance,
    LowRankCovariance,
    make_covariance,
    safe_cholesky,
)
from pyro_clip.inference.kalman import KalmanState, categorical_sqrt, probit_probs
from pyro_clip.inference.kalman_jacobian import DenseJacobian, KronJacobian

C, P = 3, 4


#: references are computed in float64 (fixture in conftest restores the default after)
pytestmark = pytest.mark.usefixtures("float64_default")


def _problem(n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, P, generator=g, dtype=torch.float64)
    w_true = torch.randn(C, P, generator=g, dtype=torch.float64)
    return g, x, w_true


def _dense_kron(coef, x):
    """Reference Jacobian built with torch.kron (tests only)."""
    return torch.cat([torch.kron(coef[b], x[b][None]) for b in range(len(x))])


def test_kron_jacobian_matches_dense_kron():
    g, x, _ = _problem(5)
    coef = torch.randn(5, 2, C, generator=g)
    h = KronJacobian(coef, x)
    dense = _dense_kron(coef, x)
    v = torch.randn(C * P, 3, generator=g)
    u = torch.randn(10, 3, generator=g)
    torch.testing.assert_close(h.mm(v), dense @ v)
    torch.testing.assert_close(h.tmm(u), dense.T @ u)
    torch.testing.assert_close(h.dense(), dense)
    m = torch.randn(10, C * P, generator=g)
    torch.testing.assert_close(h.rowdot(m), (dense * m).sum(1))
    d = torch.rand(C * P, generator=g)
    torch.testing.assert_close(h.sq_mv(d), (dense**2) @ d)
    mix = torch.randn(5, 3, 2, generator=g)
    torch.testing.assert_close(h.mix(mix).dense(), DenseJacobian(dense).mix(mix).dense())
    torch.testing.assert_close(h.quad_diag(d), dense @ torch.diag(d) @ dense.T)
    a = torch.randn(10, 10, generator=g, dtype=torch.float64)
    torch.testing.assert_close(h.tquad_diag(a), (dense.T @ a @ dense).diagonal())


@pytest.mark.parametrize("batch", [1, 5, 24])
def test_full_filter_equals_bayesian_linear_regression(batch):
    """y_bc = W_c x_b + e: the exact posterior is N(A^-1 (m0/s0 + H^T y / r), A^-1)."""
    g, x, w_true = _problem()
    r, s0 = 0.3, 2.0
    m0 = torch.randn(C * P, generator=g)
    y = x @ w_true.T + math.sqrt(r) * torch.randn(len(x), C, generator=g)
    state = KalmanState(m0, FullCovariance(C * P, s0))
    for i in range(0, len(x), batch):
        h = KronJacobian.logits(x[i : i + batch], C)
        resid = y[i : i + batch].reshape(-1) - h.mm(state.mean[:, None])[:, 0]
        state.update_gaussian(h, torch.full((h.n_obs,), r), resid)
    hd = _dense_kron(torch.eye(C).expand(len(x), C, C), x)
    prec = torch.eye(C * P) / s0 + hd.T @ hd / r
    cov = torch.linalg.inv(prec)
    torch.testing.assert_close(state.cov.dense(), cov, atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(state.mean, cov @ (m0 / s0 + hd.T @ y.reshape(-1) / r))


def test_full_filter_invariant_to_minibatch_order():
    g, x, w_true = _problem()
    y = x @ w_true.T + 0.5 * torch.randn(len(x), C, generator=g)
    results = []
    for order in (torch.arange(len(x)), torch.randperm(len(x), generator=g)):
        state = KalmanState(torch.zeros(C * P), FullCovariance(C * P, 1.0))
        for idx in order.split(4):
            h = KronJacobian.logits(x[idx], C)
            resid = y[idx].reshape(-1) - h.mm(state.mean[:, None])[:, 0]
            state.update_gaussian(h, torch.full((h.n_obs,), 0.25), resid)
        results.append((state.mean, state.cov.dense()))
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1])


def test_gaussian_innovation_log_likelihood_and_mahalanobis():
    g, x, _ = _problem(3)
    state = KalmanState(torch.zeros(C * P), FullCovariance(C * P, 1.5))
    h = KronJacobian.logits(x, C)
    resid = torch.randn(h.n_obs, generator=g)
    r = torch.full((h.n_obs,), 0.2)
    hd = h.dense()
    s = 1.5 * hd @ hd.T + 0.2 * torch.eye(h.n_obs)
    ref = torch.distributions.MultivariateNormal(torch.zeros(h.n_obs), s).log_prob(resid)
    torch.testing.assert_close(state.log_likelihood_of_update(h, r, resid), ref)
    torch.testing.assert_close(state.mahalanobis(h, r, resid), resid @ torch.linalg.solve(s, resid))


def test_ekf_step_is_natural_gradient_step():
    """Ollivier 2018: mean+ = mean + (P^-1 + F)^-1 grad, P+ = (P^-1 + F)^-1, F = Hessian of NLL."""
    g, x, _ = _problem(6)
    labels = torch.tensor([0, 2, 1, 1, 0, 2])
    p0 = torch.rand(C * P, generator=g) + 0.5
    cov0 = torch.diag(p0) + 0.1 * torch.ones(C * P, C * P)
    mean0 = torch.randn(C * P, generator=g)
    cov = FullCovariance(C * P)
    cov.p = cov0.clone()
    state = KalmanState(mean0, cov)
    logits = x @ mean0.reshape(C, P).T
    state.update_categorical(KronJacobian.logits(x, C), logits, labels)

    def loglik(theta):
        logits = x @ theta.reshape(C, P).T
        return -torch.nn.functional.cross_entropy(logits, labels, reduction="sum")

    grad = torch.func.grad(loglik)(mean0)
    fisher = -torch.func.hessian(loglik)(mean0)  # linear logits: Hessian of NLL = Fisher
    post = torch.linalg.inv(torch.linalg.inv(cov0) + fisher)
    torch.testing.assert_close(state.cov.dense(), post, atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(state.mean, mean0 + post @ grad)


def test_categorical_sqrt_factors_the_label_covariance():
    p = torch.softmax(torch.randn(4, 5), -1)
    lt = categorical_sqrt(p)
    torch.testing.assert_close(lt.mT @ lt, torch.diag_embed(p) - p[:, :, None] * p[:, None, :])


def _reference_update(prior, hw, g):
    """Dense Kalman step with unit noise: returns full posterior covariance and mean step."""
    s = torch.eye(hw.shape[0]) + hw @ prior @ hw.T
    post = prior - prior @ hw.T @ torch.linalg.solve(s, hw @ prior)
    return post, post @ g


def _categorical_batch(seed=1, n=4):
    g, x, _ = _problem(n, seed)
    logits = torch.randn(n, C, generator=g)
    labels = torch.randint(0, C, (n,), generator=g)
    return x, logits, labels


def _structured_and_exact_update(cov, prior: torch.Tensor):
    """One categorical EKF step with ``cov`` and the exact dense update from ``prior``."""
    x, logits, labels = _categorical_batch()
    state = KalmanState(torch.zeros(C * P), cov)
    jac = KronJacobian.logits(x, C)
    state.update_categorical(jac, logits, labels)
    probs = logits.softmax(-1)
    hw = jac.mix(categorical_sqrt(probs)).dense()
    g = jac.dense().T @ (torch.nn.functional.one_hot(labels, C) - probs).reshape(-1)
    post, step = _reference_update(prior, hw, g)
    return state, post, step


def test_diag_structure_keeps_diagonal_of_exact_update():
    d0 = torch.linspace(0.5, 2.0, C * P)
    cov = DiagCovariance(C * P)
    cov.d = d0.clone()
    state, post, step = _structured_and_exact_update(cov, torch.diag(d0))
    torch.testing.assert_close(cov.d, post.diagonal())
    torch.testing.assert_close(state.mean, step)


def test_block_structure_keeps_diagonal_blocks_of_exact_update():
    g0 = torch.Generator().manual_seed(3)
    blocks = torch.randn(C, P, P, generator=g0)
    blocks = blocks @ blocks.mT + torch.eye(P)
    cov = BlockCovariance(C * P, C)
    cov.p = blocks.clone()
    state, post, step = _structured_and_exact_update(cov, torch.block_diag(*blocks))
    for c in range(C):
        torch.testing.assert_close(cov.p[c], post[c * P : (c + 1) * P, c * P : (c + 1) * P])
    torch.testing.assert_close(state.mean, step)


def test_block_structure_on_dense_jacobian():
    g0 = torch.Generator().manual_seed(4)
    jd = torch.randn(5, 12, generator=g0)
    cov = BlockCovariance(12, 3, prior_var=0.7)
    grad = torch.randn(12, generator=g0)
    step = cov.update(DenseJacobian(jd), grad)
    post, ref = _reference_update(0.7 * torch.eye(12), jd, grad)
    torch.testing.assert_close(cov.dense(), torch.block_diag(*[post[i : i + 4, i : i + 4]
                                                               for i in (0, 4, 8)]))
    torch.testing.assert_close(step, ref)


def test_lowrank_structure_matches_lofi_definition():
    """LoFi: new precision = diag(u) + top-R part of W W^T + H^T H, rest moved to diag."""
    g0 = torch.Generator().manual_seed(5)
    n, rank = C * P, 3
    cov = LowRankCovariance(n, rank, prior_var=2.0)
    cov.w = 0.5 * torch.randn(n, rank, generator=g0)
    u0, w0 = cov.u.clone(), cov.w.clone()
    x, logits, _ = _categorical_batch(n=2)
    jac = KronJacobian.logits(x, C)
    hw = jac.mix(categorical_sqrt(logits.softmax(-1))).dense()
    grad = torch.randn(n, generator=g0)
    step = cov.update(jac.mix(categorical_sqrt(logits.softmax(-1))), grad)
    lowrank_part = w0 @ w0.T + hw.T @ hw
    evals, evecs = torch.linalg.eigh(lowrank_part)
    kept = (evecs[:, -rank:] * evals[-rank:]) @ evecs[:, -rank:].T
    u_ref = u0 + (lowrank_part - kept).diagonal()
    prec_ref = torch.diag(u_ref) + kept
    torch.testing.assert_close(cov.u, u_ref)
    torch.testing.assert_close(cov.w @ cov.w.T, kept)
    torch.testing.assert_close(cov.dense(), torch.linalg.inv(prec_ref))
    torch.testing.assert_close(step, torch.linalg.solve(prec_ref, grad))
    hq = torch.randn(4, n, generator=g0)
    torch.testing.assert_close(cov.quad(DenseJacobian(hq)), hq @ cov.dense() @ hq.T)
    torch.testing.assert_close(cov.var(DenseJacobian(hq)), (hq @ cov.dense() @ hq.T).diagonal())
    torch.testing.assert_close(cov.mv(grad), cov.dense() @ grad)


def test_lowrank_without_truncation_equals_full():
    g0 = torch.Generator().manual_seed(6)
    jd = torch.randn(3, 6, generator=g0)
    grad = torch.randn(6, generator=g0)
    low, full = LowRankCovariance(6, 6, 1.3), FullCovariance(6, 1.3)
    torch.testing.assert_close(low.update(DenseJacobian(jd), grad),
                               full.update(DenseJacobian(jd), grad))
    torch.testing.assert_close(low.dense(), full.dense())


@pytest.mark.parametrize("kind", COVARIANCES)
def test_structures_share_interface(kind):
    """quad / var / mv / sample moments agree with the dense covariance of each structure."""
    g0 = torch.Generator().manual_seed(7)
    cov = make_covariance(kind, C * P, 1.0, n_blocks=C, rank=2)
    x, logits, labels = _categorical_batch(n=3)
    KalmanState(torch.zeros(C * P), cov).update_categorical(
        KronJacobian.logits(x, C), logits, labels
    )
    dense = cov.dense()
    h = KronJacobian.logits(x, C)
    hd = h.dense()
    torch.testing.assert_close(cov.quad(h), hd @ dense @ hd.T)
    torch.testing.assert_close(cov.var(h), (hd @ dense @ hd.T).diagonal())
    v = torch.randn(C * P, generator=g0)
    torch.testing.assert_close(cov.mv(v), dense @ v)
    torch.testing.assert_close(cov.diagonal(), dense.diagonal())
    draws = cov.sample(40000, torch.Generator().manual_seed(0))
    emp = draws.T @ draws / len(draws)
    assert (emp - dense).abs().max() < 0.05 * dense.diagonal().max()
    cov.predict(forgetting=0.5)
    torch.testing.assert_close(cov.dense(), 2 * dense)


def test_lost_positive_definiteness_is_repaired_with_warning():
    cov = FullCovariance(3)
    cov.p = torch.tensor([[1.0, 2.0, 0.0], [2.0, 1.0, 0.0], [0.0, 0.0, 1.0]])  # eigenvalue -1
    with pytest.warns(CovarianceWarning):
        cov.repair()
    assert bool((torch.linalg.eigvalsh(cov.p) > 0).all())
    diag = DiagCovariance(3)
    diag.d = torch.tensor([1.0, -1e-3, 2.0])
    with pytest.warns(CovarianceWarning):
        diag.repair()
    assert bool((diag.d > 0).all())
    with pytest.warns(CovarianceWarning):
        safe_cholesky(torch.tensor([[1.0, 1.0], [1.0, 1.0 - 1e-14]]))


def test_probit_reduces_to_softmax_without_variance():
    mu = torch.randn(3, 4)
    torch.testing.assert_close(probit_probs(mu, torch.zeros(3, 4)), mu.softmax(-1))
    # one-dimensional check of the probit integral approximation against quadrature
    z = torch.linspace(-12, 12, 20001)
    m, v = 1.2, 4.0
    dens = torch.exp(-0.5 * (z - m) ** 2 / v) / math.sqrt(2 * math.pi * v)
    exact = torch.trapezoid(torch.sigmoid(z) * dens, z)
    approx = torch.sigmoid(torch.tensor(m / math.sqrt(1 + math.pi / 8 * v)))
    assert abs(float(exact - approx)) < 0.02


@pytest.mark.parametrize("kind", ["block", "diag"])
def test_single_example_categorical_fast_path_equals_generic_update(kind):
    """The O(C) Sherman-Morrison path for one categorical example equals the generic
    structured update (dense whitened coefficients, C x C innovation Cholesky)."""
    g0 = torch.Generator().manual_seed(8)
    c, p = 6, 5
    x = torch.randn(1, p, generator=g0)
    probs = torch.softmax(2 * torch.randn(1, c, generator=g0), -1)
    grad = torch.randn(c * p, generator=g0)
    fast_h = KronJacobian.logits(x, c).whiten_categorical(probs)
    generic_h = KronJacobian(fast_h.coef.clone(), x)  # plain Kronecker Jacobian: generic path
    covs = [make_covariance(kind, c * p, 1.0, n_blocks=c) for _ in range(2)]
    for cov in covs:  # a non-trivial structured prior
        KalmanState(torch.zeros(c * p), cov).update_categorical(
            KronJacobian.logits(torch.randn(3, p, generator=torch.Generator().manual_seed(9)), c),
            torch.randn(3, c, generator=torch.Generator().manual_seed(10)), torch.tensor([0, 2, 5]))
    torch.testing.assert_close(covs[0].dense(), covs[1].dense())
    step_fast = covs[0].update(fast_h, grad)
    step_ref = covs[1].update(generic_h, grad)
    torch.testing.assert_close(step_fast, step_ref)
    torch.testing.assert_close(covs[0].dense(), covs[1].dense())


@pytest.mark.parametrize("kind", COVARIANCES)
def test_load_state_dict_copies_the_callers_tensors(kind):
    """Filtering on after loading a checkpoint must leave the loaded dict untouched."""
    c = C
    cov = make_covariance(kind, c * P, 1.0, n_blocks=c, rank=2)
    x, logits, labels = _categorical_batch(n=3)
    KalmanState(torch.zeros(c * P), cov).update_categorical(KronJacobian.logits(x, c), logits,
                                                           labels)
    saved = cov.state_dict()
    frozen = {k: v.clone() for k, v in saved.items()}
    resumed = make_covariance(kind, c * P, 1.0, n_blocks=c, rank=2)
    resumed.load_state_dict(saved)
    torch.testing.assert_close(resumed.dense(), cov.dense())
    KalmanState(torch.zeros(c * P), resumed).update_categorical(KronJacobian.logits(x, c),
                                                               logits, labels)
    for key, value in saved.items():
        torch.testing.assert_close(value, frozen[key], rtol=0, atol=0)
