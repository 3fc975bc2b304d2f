"""Simulation-based calibration: uniform ranks where the Kalman posterior is exact."""

from __future__ import annotations

import numpy as np
import pytest

from pyro_clip.diagnostics.sbc import SBCResult, kalman_sbc, plot_ranks, sbc
from pyro_clip.errors import ConfigError


@pytest.mark.parametrize("cov", ["full", "block"])
def test_kalman_cosine_observation_has_uniform_ranks(cov):
    """Linear-Gaussian observation of one class's logit per example: ``full`` is the exact
    Kalman posterior, and ``block`` is exact too (each observation touches one class block
    and the prior is isotropic, so the posterior stays block-diagonal). 200 replications."""
    res = kalman_sbc(cov, "cosine", replications=200, n_draws=99, seed=0)
    assert res.ranks.shape == (200, 6) and res.ranks.min() >= 0 and res.ranks.max() <= 99
    assert min(res.p_values(bins=10).values()) > 0.01
    assert min(res.ks_p_values().values()) > 0.01


def test_sbc_detects_an_overconfident_posterior():
    """A posterior 10x too narrow puts the truth outside its draws: U-shaped ranks."""
    import torch

    def simulate(gen):
        theta = torch.randn(1, generator=gen, dtype=torch.float64)
        return theta, theta + torch.randn(1, generator=gen, dtype=torch.float64)

    def narrow(y, n, gen):  # exact posterior N(y/2, 1/2), reported with sd / 10
        return y / 2 + 0.1 * 0.5**0.5 * torch.randn(n, 1, generator=gen, dtype=torch.float64)

    res = sbc(simulate, narrow, replications=200, n_draws=99, seed=1)
    assert res.p_values()["stat_0"] < 1e-6
    counts = res.histogram(10)[:, 0]
    assert counts[0] + counts[-1] > 0.5 * 200  # mass piles up in the end bins
    fig = plot_ranks(res)
    assert len(fig.axes) == 1


def test_bad_arguments():
    with pytest.raises(ConfigError, match="replications"):
        sbc(lambda g: None, lambda d, n, g: None, replications=0)
    with pytest.raises(ConfigError, match="divide"):
        SBCResult(np.zeros((5, 1), dtype=int), 99, ["a"]).p_values(bins=7)
