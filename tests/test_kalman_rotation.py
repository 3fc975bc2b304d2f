"""``rotate_inputs``: the linear head on ``U^T (x - mu)`` (principal axes of the training
features). Exact reparametrisation for ``full``/``block``/``kron``; ``posterior()`` is handed
back over the original weights ``[w, b]`` of ``z = W x + b``."""

from __future__ import annotations

import io

import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F

from pyro_clip.errors import ConfigError
from pyro_clip.inference.kalman_adapters import LinearHead, principal_axes
from pyro_clip.inference.posteriors import RowLinearMap
from pyro_clip.methods import MethodContext, create_method
from tests.test_kalman_method import NAMES, _synthetic


@pytest.fixture
def ctx(tiny_backbone):
    return MethodContext(tiny_backbone, seed=3, progress=False)


def _fit(ctx, **opts):
    m = create_method("kalman", prior_var=10.0, **opts).setup(ctx)
    m.fit(_synthetic(ctx, NAMES), _synthetic(ctx, NAMES, 2, seed=1))
    return m


def _original_inputs(x: torch.Tensor) -> torch.Tensor:
    x = F.normalize(x.double(), dim=-1)
    return torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)


def test_principal_axes_are_orthogonal_and_diagonalise_the_second_moment():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(7, 12, generator=gen, dtype=torch.float64)  # N < D: null space filled
    mu = F.normalize(x, dim=-1).mean(0)
    u = principal_axes(x, mu)
    torch.testing.assert_close(u.T @ u, torch.eye(12, dtype=torch.float64), rtol=0, atol=1e-12)
    z = (F.normalize(x, dim=-1) - mu) @ u
    second = z.T @ z / len(z)
    off = second - torch.diag(second.diagonal())
    assert float(off.abs().max()) < 1e-12 * float(second.diagonal().max())
    assert bool((second.diagonal()[:-1] >= second.diagonal()[1:] - 1e-12).all())  # decreasing


def test_rotated_prior_is_zero_shot_and_isotropic_in_the_original_basis():
    """``N(W0 U, s0 I)`` mapped back by ``to_original`` is ``N(W0, s0 I)``: same logits, same
    density (an isotropic Gaussian is invariant under an orthogonal map)."""
    gen = torch.Generator().manual_seed(1)
    text = torch.randn(4, 16, generator=gen, dtype=torch.float64)
    x = torch.randn(9, 16, generator=gen, dtype=torch.float64)
    plain = LinearHead(text, 30.0)
    head = LinearHead(text, 30.0, rotation=principal_axes(x, None))
    torch.testing.assert_close(head.logits(head.prior_mean(), x, text),
                               plain.logits(plain.prior_mean(), x, text), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close((head.inputs(x) ** 2).sum(1), (plain.inputs(x) ** 2).sum(1),
                               rtol=1e-12, atol=0)
    m = head.to_original()
    w0 = plain.prior_mean().reshape(4, 17)
    torch.testing.assert_close(head.prior_mean().reshape(4, 17) @ m.T, w0, rtol=1e-12,
                               atol=1e-12)
    s0 = 3.0
    fitted = dist.Normal(head.prior_mean().reshape(4, 17), s0**0.5).to_event(2)
    original = RowLinearMap(fitted, m)
    reference = dist.Normal(w0, s0**0.5).to_event(2)
    draws = reference.sample((5,))
    torch.testing.assert_close(original.log_prob(draws), reference.log_prob(draws),
                               rtol=1e-12, atol=1e-10)


@pytest.mark.parametrize("cov", ["full", "block", "kron"])
def test_rotation_is_an_exact_reparametrisation(ctx, cov):
    """full, block (within-class rotation) and kron (``G -> U^T G U``): the same predictive
    moments with and without the rotation, to float64 round-off."""
    x = _synthetic(ctx, NAMES, 5, seed=2).features["joint"]
    moments = [
        _fit(ctx, covariance=cov, rank=4, center_inputs=False, rotate_inputs=r)
        ._logit_moments(x, NAMES) for r in (False, True)
    ]
    for a, b in zip(*moments, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-9 * float(a.abs().max()))


@pytest.mark.parametrize("cov", ["diag", "lowrank", "block"])
def test_posterior_is_over_the_original_weights(ctx, cov):
    """Against a dense reference: ``vec([w, b]) ~ N((I kron M) m, (I kron M) P (I kron M)^T)``
    with ``P`` the structure's dense covariance in the fitted basis; its logits on
    ``[x, 1]`` (normalised x) are the head's logits on its own inputs."""
    m = _fit(ctx, covariance=cov, rank=4, center_inputs=True, rotate_inputs=True)
    c, p = m.adapter.n_classes, m.adapter.n_in
    big = torch.kron(torch.eye(c, dtype=torch.float64), m.adapter.to_original())
    ref = torch.distributions.MultivariateNormal(
        big @ m.state.mean, covariance_matrix=big @ m.state.cov.dense() @ big.T)
    post = m.posterior()
    assert tuple(post.event_shape) == (c, p)
    torch.testing.assert_close(post.mean.reshape(-1), ref.mean, rtol=1e-10, atol=1e-10)
    draws = ref.sample((6,))
    torch.testing.assert_close(post.log_prob(draws.reshape(6, c, p)), ref.log_prob(draws),
                               rtol=1e-9, atol=1e-7)
    x = _synthetic(ctx, NAMES, 3, seed=4).features["joint"]
    w = post.rsample((4,))
    fitted = m.posterior(basis="fitted")
    w_fit = torch.linalg.solve(m.adapter.to_original(), w.transpose(-1, -2)).transpose(-1, -2)
    torch.testing.assert_close(torch.einsum("np,scp->snc", _original_inputs(x), w),
                               torch.einsum("np,scp->snc", m.adapter.inputs(x), w_fit),
                               rtol=1e-9, atol=1e-9)
    assert bool(torch.isfinite(fitted.log_prob(w_fit)).all())
    with pytest.raises(ConfigError, match="basis"):
        m.posterior(basis="rotated")


def test_rotated_state_round_trips_through_a_checkpoint(ctx):
    m = _fit(ctx, covariance="diag")  # auto: centred and rotated
    assert m.rotation is not None and m.center is not None
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    buf.seek(0)
    again = create_method("kalman", prior_var=10.0, covariance="diag").setup(ctx)
    again.load_state_dict(torch.load(buf, weights_only=True))
    x = _synthetic(ctx, NAMES, 5, seed=2).features["joint"]
    torch.testing.assert_close(again.predict(x, NAMES).probs, m.predict(x, NAMES).probs,
                               rtol=0, atol=0)


def test_rotate_inputs_is_validated():
    with pytest.raises(ConfigError, match="rotate_inputs"):
        create_method("kalman", rotate_inputs="yes")
    with pytest.raises(ConfigError, match="rotate_inputs"):
        create_method("kalman", rotate_inputs=True, adapter="residual")


def test_cli_checkpoint_of_a_rotated_head_reloads(tmp_path):
    """``pyro-clip fit`` with a rotated, centred ``diag`` head, then ``evaluate`` from the
    checkpoint: the same test predictions (float32 rounding)."""
    import numpy as np

    from pyro_clip.cli import main
    from tests.conftest import TINY

    fit, ev = tmp_path / "fit", tmp_path / "ev"
    assert main(["fit", "--method", "kalman", "--backbone", TINY, "--shots", "1", "--seed", "3",
                 "--no-progress", "--out", str(fit), "--opt", "covariance=diag",
                 "--opt", "rotate_inputs=true", "--opt", "prior_var_grid=[1.0]"]) == 0
    assert main(["evaluate", str(fit), "--dataset", "fashion-mnist", "--out", str(ev)]) == 0
    fitted, reloaded = np.load(fit / "predictions.npz"), np.load(ev / "predictions.npz")
    np.testing.assert_allclose(reloaded["fashion-mnist/probs"], fitted["test/probs"],
                               rtol=1e-5, atol=1e-6)
