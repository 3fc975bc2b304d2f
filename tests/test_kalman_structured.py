"""Structured (minibatch / Gram) Kalman updates against dense references.

The block and diag minibatch paths (:func:`categorical_block_gain`) and the low-rank update
from the Gram of ``[W, H^T]`` change only the arithmetic: each is checked against the exact
dense Kalman step (``torch.linalg.solve`` on the (m x m) innovation), against the generic
structured path, and, for the low-rank update, against the previous implementation that
stacked ``H^T`` densely (kept below as the reference).
"""

from __future__ import annotations

import pytest
import torch

from pyro_clip.errors import ConfigError
from pyro_clip.inference.covariance import (
    BlockCovariance,
    DiagCovariance,
    LowRankCovariance,
    categorical_block_gain,
    categorical_gain_terms,
    structure,
)
from pyro_clip.inference.kalman_jacobian import (
    CategoricalKronJacobian,
    DenseJacobian,
    KronJacobian,
)
from pyro_clip.methods import create_method

pytestmark = pytest.mark.usefixtures("float64_default")

#: float64 round-off on O(1) quantities after a few hundred flops per entry
TOL = {"rtol": 1e-9, "atol": 1e-11}


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _probs(b: int, c: int, g: torch.Generator) -> torch.Tensor:
    return torch.softmax(2.0 * torch.randn(b, c, generator=g), -1)


def _pd_blocks(c: int, p: int, g: torch.Generator) -> torch.Tensor:
    a = torch.randn(c, p, p, generator=g)
    return a @ a.mT / p + 0.3 * torch.eye(p)


def _dense_categorical(x: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """Whitened Jacobian rows (b, i) = L_b^T kron x_b^T with torch.kron (reference only)."""
    p = probs
    lt = p.sqrt().unsqueeze(-1) * (torch.eye(p.shape[1]) - p.unsqueeze(-2))
    return torch.cat([torch.kron(lt[b], x[b][None]) for b in range(len(x))])


def _exact_step(prior: torch.Tensor, hw: torch.Tensor, g: torch.Tensor):
    """Exact Kalman step: ``P+ = P - P H^T S^-1 H P`` (S = I + H P H^T), step ``P+ g``."""
    s = torch.eye(hw.shape[0]) + hw @ prior @ hw.T
    post = prior - prior @ hw.T @ torch.linalg.solve(s, hw @ prior)
    return post, post @ g


@pytest.mark.parametrize("c,b", [(2, 1), (5, 3), (7, 8), (4, 1), (6, 3)])
def test_block_gain_equals_dense_woodbury_operand(c, b):
    """M = (I + F Q)^-1 F with F = blockdiag_b(diag p_b - p_b p_b^T) in class-major order."""
    g = _gen(10 * c + b)
    probs = _probs(b, c, g)
    a = torch.randn(c, b, b, generator=g)
    q = a @ a.mT + 0.1 * torch.eye(b)
    r = torch.randn(c, b, generator=g)
    # class-major index (c, b): F[(c,b),(c',b')] = d_bb' (p_bc d_cc' - p_bc p_bc')
    f = torch.zeros(c, b, c, b)
    for k in range(b):
        f[:, k, :, k] = torch.diag(probs[k]) - torch.outer(probs[k], probs[k])
    f = f.reshape(c * b, c * b)
    m = torch.linalg.solve(torch.eye(c * b) + f @ torch.block_diag(*q), f)
    m_r, m_blocks = categorical_block_gain(probs, q, r)
    torch.testing.assert_close(m_r.reshape(-1), m @ r.reshape(-1), **TOL)
    ref_blocks = torch.stack([m[i * b:(i + 1) * b, i * b:(i + 1) * b] for i in range(c)])
    torch.testing.assert_close(m_blocks, ref_blocks, **TOL)
    if b == 1:  # the single-example Sherman-Morrison formula is the same operator
        sm_r, sm_diag = categorical_gain_terms(probs[0], q[:, 0, 0], r[:, 0])
        torch.testing.assert_close(m_r[:, 0], sm_r, **TOL)
        torch.testing.assert_close(m_blocks[:, 0, 0], sm_diag, **TOL)


def _minibatch_case(c: int, b: int, p: int, seed: int):
    g = _gen(seed)
    x = torch.randn(b, p, generator=g)
    probs = _probs(b, c, g)
    grad = torch.randn(c * p, generator=g)
    return g, x, probs, grad


@pytest.mark.parametrize("c,b", [(3, 1), (3, 3), (5, 8), (7, 3), (7, 8)])
def test_block_minibatch_update_equals_exact_blocks_and_generic_path(c, b):
    p = 4
    g, x, probs, grad = _minibatch_case(c, b, p, 100 + 10 * c + b)
    blocks = _pd_blocks(c, p, g)
    fast, generic = BlockCovariance(c * p, c), BlockCovariance(c * p, c)
    fast.p, generic.p = blocks.clone(), blocks.clone()
    fast_h = KronJacobian.logits(x, c).whiten_categorical(probs)  # minibatch (or SM) path
    generic_h = KronJacobian(fast_h.coef.clone(), x)  # plain coefficients: generic path
    step = fast.update(fast_h, grad)
    step_generic = generic.update(generic_h, grad)
    post, step_ref = _exact_step(torch.block_diag(*blocks), _dense_categorical(x, probs), grad)
    torch.testing.assert_close(step, step_ref, **TOL)
    torch.testing.assert_close(step, step_generic, **TOL)
    for k in range(c):
        sl = slice(k * p, (k + 1) * p)
        torch.testing.assert_close(fast.p[k], post[sl, sl], **TOL)
    torch.testing.assert_close(fast.p, generic.p, **TOL)


def test_block_minibatch_of_one_equals_sherman_morrison_path():
    """B = 1 through the Woodbury helper gives the single-example path's state and step."""
    c, p = 6, 5
    g, x, probs, grad = _minibatch_case(c, 1, p, 7)
    blocks = _pd_blocks(c, p, g)
    sm, wb = BlockCovariance(c * p, c), BlockCovariance(c * p, c)
    sm.p, wb.p = blocks.clone(), blocks.clone()
    h = KronJacobian.logits(x, c).whiten_categorical(probs)
    step_sm = sm.update(h, grad)
    step_wb = wb._update_minibatch_categorical(h, grad)
    torch.testing.assert_close(step_wb, step_sm, **TOL)
    torch.testing.assert_close(wb.p, sm.p, **TOL)


@pytest.mark.parametrize("c,b", [(3, 3), (5, 8), (7, 3)])
def test_diag_minibatch_update_equals_exact_diagonal_and_generic_path(c, b):
    p = 4
    g, x, probs, grad = _minibatch_case(c, b, p, 200 + 10 * c + b)
    d0 = 0.2 + torch.rand(c * p, generator=g)
    fast, generic = DiagCovariance(c * p), DiagCovariance(c * p)
    fast.d, generic.d = d0.clone(), d0.clone()
    fast_h = KronJacobian.logits(x, c).whiten_categorical(probs)
    step = fast.update(fast_h, grad)
    step_generic = generic.update(KronJacobian(fast_h.coef.clone(), x), grad)
    post, step_ref = _exact_step(torch.diag(d0), _dense_categorical(x, probs), grad)
    torch.testing.assert_close(step, step_ref, **TOL)
    torch.testing.assert_close(fast.d, post.diagonal(), **TOL)
    torch.testing.assert_close(step, step_generic, **TOL)
    torch.testing.assert_close(fast.d, generic.d, **TOL)


def _jacobians(seed: int = 3, b: int = 3, c: int = 4, p: int = 5):
    g = _gen(seed)
    x = torch.randn(b, p, generator=g)
    probs = _probs(b, c, g)
    coef = torch.randn(b, 2, c, generator=g)
    return {
        "categorical": KronJacobian.logits(x, c).whiten_categorical(probs),
        "identity": KronJacobian.logits(x, c),
        "kron": KronJacobian(coef, x),
        "dense": DenseJacobian(torch.randn(6, c * p, generator=g)),
    }


@pytest.mark.parametrize("name", ["categorical", "identity", "kron", "dense"])
def test_structured_gram_products_match_the_dense_matrix(name):
    h = _jacobians()[name]
    dense = h.tmm(torch.eye(h.n_obs)).T  # (m, n) from the adjoint product
    d = 0.1 + torch.rand(h.n_params, generator=_gen(4))
    torch.testing.assert_close(h.quad_diag(d), dense @ torch.diag(d) @ dense.T, **TOL)
    torch.testing.assert_close(h.gram(), dense @ dense.T, **TOL)
    torch.testing.assert_close(h.col_sq(), (dense * dense).sum(0), **TOL)


def _lofi_dense_reference(u, w, hd, rank):
    """The previous implementation: stack ``[W, H^T]`` densely and truncate its Gram."""
    wide = torch.cat([w, hd.T], dim=1)
    _, evecs = torch.linalg.eigh(wide.T @ wide)
    new_w = wide @ evecs[:, -rank:]
    return u + (wide * wide).sum(1) - (new_w * new_w).sum(1), new_w


@pytest.mark.parametrize("name", ["categorical", "dense", "kron"])
def test_lowrank_gram_update_equals_dense_lofi_update(name):
    """Three sequential updates: diag(u), W W^T (W itself is defined up to a rotation),
    the mean step and quad/var agree with the dense-stacking implementation."""
    rank = 3
    cov = LowRankCovariance(4 * 5, rank, prior_var=2.0)
    u_ref, w_ref = cov.u.clone(), cov.w.clone()
    for step_no in range(3):
        h = _jacobians(seed=20 + step_no)[name]
        hd = h.tmm(torch.eye(h.n_obs)).T
        grad = torch.randn(cov.n, generator=_gen(30 + step_no))
        step = cov.update(h, grad)
        u_ref, w_ref = _lofi_dense_reference(u_ref, w_ref, hd, rank)
        prec_ref = torch.diag(u_ref) + w_ref @ w_ref.T
        torch.testing.assert_close(cov.u, u_ref, **TOL)
        torch.testing.assert_close(cov.w @ cov.w.T, w_ref @ w_ref.T, **TOL)
        torch.testing.assert_close(step, torch.linalg.solve(prec_ref, grad), **TOL)
        cov_ref = torch.linalg.inv(prec_ref)
        torch.testing.assert_close(cov.quad(h), hd @ cov_ref @ hd.T, **TOL)
        torch.testing.assert_close(cov.var(h), (hd @ cov_ref @ hd.T).diagonal(), **TOL)


@pytest.mark.parametrize("k", [1, 2, 5, 6, 8])
def test_lowrank_top_classes_truncates_dropped_rows_to_the_diagonal(k):
    """LoFi on [W, rows of the K likeliest classes], every other row's information (and the
    truncated rank) moved to diag(u), against dense row selection; K >= C (6) is plain LoFi."""
    b, c, p, rank = 3, 6, 4, 3
    g = _gen(42)
    x = torch.randn(b, p, generator=g)
    probs = _probs(b, c, g)
    h = KronJacobian.logits(x, c).whiten_categorical(probs)
    cov = LowRankCovariance(c * p, rank, 2.0, top_classes=k)
    cov.w = 0.3 * torch.randn(c * p, rank, generator=g)
    u0, w0 = cov.u.clone(), cov.w.clone()
    grad = torch.randn(c * p, generator=g)
    step = cov.update(h, grad)
    hd = _dense_categorical(x, probs)  # rows (b, i)
    order = probs.argsort(dim=1, descending=True)[:, :k]
    keep = torch.cat([bi * c + order[bi] for bi in range(b)])
    torch.testing.assert_close(h.top_rows(k).dense(), hd[keep], **TOL)
    _, w_ref = _lofi_dense_reference(u0, w0, hd[keep], rank)
    u_ref = u0 + (w0 * w0).sum(1) + (hd * hd).sum(0) - (w_ref * w_ref).sum(1)
    prec_ref = torch.diag(u_ref) + w_ref @ w_ref.T
    torch.testing.assert_close(cov.u, u_ref, **TOL)
    torch.testing.assert_close(cov.w @ cov.w.T, w_ref @ w_ref.T, **TOL)
    torch.testing.assert_close(step, torch.linalg.solve(prec_ref, grad), **TOL)
    # the dropped information went to the diagonal: total diag(precision) is conserved
    torch.testing.assert_close(prec_ref.diagonal(),
                               u0 + (w0 * w0).sum(1) + (hd * hd).sum(0), **TOL)


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="no CUDA GPU visible (torch.cuda.is_available() is False): "
                           "CUDA-vs-CPU check of the minibatch paths skipped")
@pytest.mark.parametrize("kind", ["block", "diag"])
def test_minibatch_paths_on_cuda_match_cpu(kind):
    c, b, p = 5, 8, 4
    _, x, probs, grad = _minibatch_case(c, b, p, 300)
    results = []
    for device in ("cpu", "cuda"):
        cov = (BlockCovariance(c * p, c) if kind == "block" else DiagCovariance(c * p))
        for name, value in cov.state_dict().items():
            setattr(cov, name, value.to(device))
        h = KronJacobian.logits(x.to(device), c).whiten_categorical(probs.to(device))
        step = cov.update(h, grad.to(device))
        results.append((step.cpu(), cov.dense().cpu()))
    torch.testing.assert_close(results[1][0], results[0][0], **TOL)
    torch.testing.assert_close(results[1][1], results[0][1], **TOL)


def test_block_minibatch_with_saturated_probabilities():
    """Probabilities that underflow to exactly 0 (confident logits) keep sum_c N_c positive
    definite: the step and blocks still equal the dense exact update."""
    c, b, p = 5, 4, 3
    g = _gen(400)
    x = torch.randn(b, p, generator=g)
    probs = torch.softmax(800.0 * torch.randn(b, c, generator=g), -1)
    assert bool((probs == 0).any())
    blocks = _pd_blocks(c, p, g)
    grad = torch.randn(c * p, generator=g)
    cov = BlockCovariance(c * p, c)
    cov.p = blocks.clone()
    step = cov.update(KronJacobian.logits(x, c).whiten_categorical(probs), grad)
    post, step_ref = _exact_step(torch.block_diag(*blocks), _dense_categorical(x, probs), grad)
    torch.testing.assert_close(step, step_ref, **TOL)
    for k in range(c):
        sl = slice(k * p, (k + 1) * p)
        torch.testing.assert_close(cov.p[k], post[sl, sl], **TOL)


def test_bad_top_classes_is_a_clear_error():
    with pytest.raises(ConfigError, match="top_classes must be"):
        create_method("kalman", covariance="lowrank", top_classes=-1)
    with pytest.raises(ConfigError, match="top_classes must be"):
        LowRankCovariance(10, 2, top_classes=-3)


def test_block_auto_batch_keeps_one_example_below_256_classes():
    """The documented rule: B = 1 (each example relinearises) below 256 classes, 32 from
    256 (memory-bound state, minibatch path); diag keeps its O(C P) single-example path."""
    block, diag = structure("block"), structure("diag")
    assert [block.auto_batch_size(c) for c in (10, 100, 255, 256, 1000)] == [1, 1, 1, 32, 32]
    assert diag.auto_batch_size(1000) == 1


def test_block_var_of_a_linear_head_jacobian_matches_the_dense_reference():
    """``diag(H P H^T)`` through the per-class path (no (K, m, P) block columns) for the logit,
    the categorical-whitened and a general linear-head Jacobian equals the dense product."""
    g = torch.Generator().manual_seed(3)
    c, p, b = 4, 5, 3
    cov = BlockCovariance(c * p, c, 1.0)
    a = torch.randn(c, p, p, generator=g, dtype=torch.float64)
    cov.p = a @ a.transpose(1, 2) + torch.eye(p, dtype=torch.float64)
    x = torch.randn(b, p, generator=g, dtype=torch.float64)
    probs = torch.softmax(torch.randn(b, c, generator=g, dtype=torch.float64), -1)
    for h in (KronJacobian.logits(x, c), CategoricalKronJacobian(probs, x),
              KronJacobian(torch.randn(b, 2, c, generator=g, dtype=torch.float64), x)):
        hd = h.dense()
        torch.testing.assert_close(cov.var(h), (hd @ cov.dense() @ hd.T).diagonal())
