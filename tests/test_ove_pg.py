"""OVE-PG maths against independent references (series, grids, hand formulas, Monte Carlo)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from pyro_clip.errors import ConfigError
from pyro_clip.models.ove_pg import (
    OvePGConfig,
    conditional_psi,
    ove_differences,
    ove_log_likelihood,
    ove_pg_loss,
)
from pyro_clip.models.polya_gamma import pg_mean, pg_variance, sample_pg

C_VALUES = [0.0, 0.5, 2.0, 5.0, -3.0]


@settings(max_examples=100, deadline=None)
@given(
    st.integers(2, 8).flatmap(
        lambda c: st.tuples(
            st.lists(st.floats(-30, 30), min_size=c, max_size=c), st.integers(0, c - 1)
        )
    )
)
def test_ove_log_likelihood_is_a_lower_bound_on_softmax(case):
    logits, label = case
    f = torch.tensor([logits], dtype=torch.float64)
    y = torch.tensor([label])
    # brute force: sum over j != y of log sigmoid(f_y - f_j), written out element by element
    brute = sum(-math.log1p(math.exp(-(logits[label] - v))) if logits[label] - v > -30
                else logits[label] - v for j, v in enumerate(logits) if j != label)
    assert ove_log_likelihood(f, y).item() == pytest.approx(brute, rel=1e-9, abs=1e-9)
    assert ove_log_likelihood(f, y).item() <= F.log_softmax(f, -1)[0, label].item() + 1e-12


def test_ove_differences_by_hand():
    f = torch.tensor([[1.0, 4.0, -2.0], [0.5, 0.0, 3.0]])
    d = ove_differences(f, torch.tensor([1, 2]))
    torch.testing.assert_close(d, torch.tensor([[3.0, 6.0], [2.5, 3.0]]))


def _series_moments(c: float, k_max: int = 2_000_000) -> tuple[float, float]:
    """PG(1,c) = 1/(2 pi^2) sum_k g_k / ((k-1/2)^2 + c^2/(4 pi^2)), g_k ~ Exp(1) (Polson eq. 1)."""
    k = np.arange(1, k_max + 1, dtype=np.float64)
    d = (k - 0.5) ** 2 + c**2 / (4 * math.pi**2)
    mean = (1 / d).sum() / (2 * math.pi**2)
    var = (1 / d**2).sum() / (4 * math.pi**4)
    return mean, var


@pytest.mark.parametrize("c", [*C_VALUES, 1e-6, 1e-3])
def test_pg_closed_form_moments_match_the_infinite_series(c):
    mean, var = _series_moments(c)
    t = torch.tensor([c], dtype=torch.float64)
    assert pg_mean(t).item() == pytest.approx(mean, rel=1e-6)
    assert pg_variance(t).item() == pytest.approx(var, rel=1e-6)


@pytest.mark.parametrize("c", [1e-6, 1e-3, 5e-3, 9.9e-3, -9.9e-3, 1.01e-2, 0.1, 2.0, -7.0])
def test_pg_variance_matches_high_precision_closed_form(c):
    """Both sides of the small-|c| switch against the closed form in 50-digit arithmetic
    (mpmath): the old series 1/24 - c^2/240 was off by ~c^2/10 relative (issue 11, defect 1)."""
    mpmath = pytest.importorskip("mpmath")
    with mpmath.workdps(50):
        x = mpmath.mpf(abs(c))
        ref = float((mpmath.sinh(x) - x) / (4 * x**3 * mpmath.cosh(x / 2) ** 2))
    got = pg_variance(torch.tensor([c], dtype=torch.float64)).item()
    # float64: the series is exact to ~1e-15; the closed form loses ~1e-16 c^-2 to cancellation
    assert got == pytest.approx(ref, rel=1e-11, abs=0)


@pytest.mark.parametrize("c", C_VALUES)
def test_pg_draws_match_known_mean_and_variance(c):
    n = 200_000
    draws = sample_pg(torch.full((n,), c, dtype=torch.float64), np.random.default_rng(7))
    true_mean = math.tanh(c / 2) / (2 * c) if c != 0 else 0.25
    true_var = pg_variance(torch.tensor(c, dtype=torch.float64)).item()
    se_mean = math.sqrt(true_var / n)
    assert abs(draws.mean().item() - true_mean) < 5 * se_mean
    # SE of the sample variance: sqrt((m4 - var^2)/n); bound m4 by the sample's own 4th moment
    m4 = ((draws - draws.mean()) ** 4).mean().item()
    assert abs(draws.var().item() - true_var) < 5 * math.sqrt((m4 - true_var**2) / n)


def test_pg_draws_are_seeded_and_keep_dtype():
    c = torch.linspace(-4, 4, 50)
    a = sample_pg(c, np.random.default_rng(3))
    b = sample_pg(c, np.random.default_rng(3))
    assert a.dtype == torch.float32 and torch.equal(a, b) and (a > 0).all()


def test_pg_augmentation_identity_by_monte_carlo():
    """sigmoid(psi) = 1/2 exp(psi/2) E_{omega ~ PG(1,0)}[exp(-omega psi^2 / 2)]."""
    omega = sample_pg(torch.zeros(400_000, dtype=torch.float64), np.random.default_rng(0))
    for psi in (-2.0, 0.3, 1.5):
        mc = 0.5 * math.exp(psi / 2) * torch.exp(-omega * psi**2 / 2).mean().item()
        assert mc == pytest.approx(1 / (1 + math.exp(-psi)), rel=5e-3)


@pytest.mark.parametrize(("m", "omega", "alpha"), [(0.7, 0.3, 1.0), (-2.0, 1.7, 0.5),
                                                    (3.0, 0.01, 4.0)])
def test_conditional_gaussian_matches_brute_force_grid(m, omega, alpha):
    grid = torch.linspace(-40, 40, 400_001, dtype=torch.float64)
    # prior N(m, 1/alpha) times the augmented likelihood exp(kappa psi - omega psi^2 / 2)
    logp = -alpha * (grid - m) ** 2 / 2 + 0.5 * grid - omega * grid**2 / 2
    w = torch.exp(logp - logp.max())
    w = w / w.sum()
    mean = (w * grid).sum().item()
    var = (w * (grid - mean) ** 2).sum().item()
    loc, scale = conditional_psi(torch.tensor(m, dtype=torch.float64),
                                 torch.tensor(omega, dtype=torch.float64), alpha)
    assert loc.item() == pytest.approx(mean, abs=1e-6)
    assert scale.item() ** 2 == pytest.approx(var, rel=1e-6)


def _hand_loss(f, f0, y, omega, alpha, lam, eps):
    """Paper eq. 10 with loops: -mean_b mean_m sum_j log sig(psi) + lam mean (f - f0)^2."""
    b, c = f.shape
    total = 0.0
    for i in range(b):
        others = [j for j in range(c) if j != y[i]]
        for k, j in enumerate(others):
            s2 = 1.0 / (omega[i, k] + alpha)
            mu = s2 * (alpha * (f[i, y[i]] - f[i, j]) + 0.5)
            for mm in range(eps.shape[0]):
                psi = mu + math.sqrt(s2) * eps[mm, i, k]
                total += math.log1p(math.exp(-psi)) / (eps.shape[0] * b)
    return total + lam * ((f - f0) ** 2).mean()


@pytest.mark.parametrize(("lam", "m"), [(0.2, 1), (0.3, 4), (0.0, 2)])
def test_pyro_objective_equals_the_papers_loss_by_hand(lam, m):
    g = torch.Generator().manual_seed(0)
    b, c = 5, 4
    f = torch.randn(b, c, generator=g, dtype=torch.float64)
    f0 = torch.randn(b, c, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 3, 1, 1, 2])
    omega = torch.rand(b, c - 1, generator=g, dtype=torch.float64) + 0.1
    cfg = OvePGConfig(alpha=0.7, lam=lam, num_samples=m)
    torch.manual_seed(11)
    loss = ove_pg_loss(f, f0, y, cfg, np.random.default_rng(0), omega=omega)
    torch.manual_seed(11)  # the reparameterised draw is loc + scale * N(0, 1) noise
    eps = torch.randn(m, b, c - 1, dtype=torch.float64)
    ref = _hand_loss(f.numpy(), f0.numpy(), y.numpy(), omega.numpy(), 0.7, lam, eps.numpy())
    assert loss.item() == pytest.approx(ref, rel=1e-10)


def test_m_samples_are_one_vectorised_draw_and_reduce_variance():
    g = torch.Generator().manual_seed(1)
    f = torch.randn(8, 5, generator=g, requires_grad=True)
    f0, y = torch.randn(8, 5, generator=g), torch.randint(0, 5, (8,), generator=g)
    rng = np.random.default_rng(0)

    def spread(m):
        vals = [ove_pg_loss(f, f0, y, OvePGConfig(num_samples=m, omega="mean"), rng).item()
                for _ in range(60)]
        return np.std(vals)

    assert spread(16) < 0.4 * spread(1)  # ~1/4 for independent draws


def test_deterministic_omega_uses_the_true_pg_mean():
    f0 = torch.tensor([[2.0, -1.0, 0.0]])
    y = torch.tensor([0])
    from pyro_clip.models.ove_pg import draw_omega

    omega = draw_omega(f0, y, "mean", np.random.default_rng(0))
    c = np.array([3.0, 2.0])  # f0_y - f0_j
    assert omega.dtype == torch.float32  # float32 arithmetic: float32 tolerance
    np.testing.assert_allclose(omega.numpy()[0], np.tanh(c / 2) / (2 * c), rtol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"alpha": 0.0}, "alpha .* must be a finite number > 0, got 0.0"),
        ({"alpha": -1.0}, "alpha"),
        ({"lam": -0.1}, "lambda .* must be a finite number >= 0, got -0.1"),
        ({"num_samples": 0}, r"num_samples \(M\) must be an integer >= 1, got 0"),
        ({"omega": "official"}, "omega must be 'sample'"),
    ],
)
def test_bad_ove_pg_options_are_rejected(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        OvePGConfig(**kwargs).validate()
