"""Simulation-based calibration (Talts, Betancourt, Simpson, Vehtari & Gelman 2018).

For ``r = 1..R``: draw ``theta_r ~ p(theta)``, simulate data ``D_r ~ p(D | theta_r)``, fit the
method to ``D_r`` and draw ``L`` values ``theta_r^(l)`` from its posterior. For every scalar
statistic ``h`` the rank ``#{l : h(theta_r^(l)) < h(theta_r)}`` is uniform on ``{0, ..., L}``
exactly when the posterior is the exact Bayesian posterior (Talts et al. 2018, Thm. 1);
a U shape means over-confidence, an inverted U under-confidence, a slope a biased mean.

:func:`sbc` runs the loop for any ``simulate`` / ``posterior_draws`` pair; :func:`kalman_sbc`
fits the Kalman filter of :mod:`pyro_clip.inference.kalman` with the real linear head and any
covariance structure, with the Gaussian (cosine) or the categorical observation;
:func:`laplace_sbc` fits the last-layer Laplace posterior of laplace-torch. Statistics are the
logits of every class at one fixed probe input and the first weight of every class.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats

from pyro_clip.errors import ConfigError

#: ``simulate(generator) -> (theta (K,) statistics of the truth, data)``
Simulator = Callable[[torch.Generator], tuple[torch.Tensor, Any]]
#: ``posterior_draws(data, L, generator) -> (L, K) statistics of posterior draws``
Fitter = Callable[[Any, int, torch.Generator], torch.Tensor]


@dataclass
class SBCResult:
    """Ranks (R, K) of the true statistics among ``n_draws`` posterior draws, in 0..n_draws."""

    ranks: np.ndarray
    n_draws: int
    names: list[str] = field(default_factory=list)

    def p_values(self, bins: int = 10) -> dict[str, float]:
        """Chi-square test of uniform ranks per statistic, ``bins`` equal-width rank bins
        (``bins`` must divide ``n_draws + 1`` so every bin holds as many ranks)."""
        if (self.n_draws + 1) % bins:
            raise ConfigError(f"bins={bins} must divide n_draws + 1 = {self.n_draws + 1}")
        counts = self.histogram(bins)
        return {n: float(stats.chisquare(counts[:, k]).pvalue) for k, n in enumerate(self.names)}

    def ks_p_values(self) -> dict[str, float]:
        """Kolmogorov-Smirnov test of ``(rank + U) / (L + 1)`` against U(0, 1) (jittered ranks)."""
        rng = np.random.default_rng(0)
        u = (self.ranks + rng.uniform(size=self.ranks.shape)) / (self.n_draws + 1)
        return {n: float(stats.kstest(u[:, k], "uniform").pvalue)
                for k, n in enumerate(self.names)}

    def histogram(self, bins: int = 10) -> np.ndarray:
        """Rank counts (bins, K)."""
        idx = self.ranks * bins // (self.n_draws + 1)
        return np.stack([np.bincount(idx[:, k], minlength=bins) for k in range(idx.shape[1])], 1)


def sbc(simulate: Simulator, posterior_draws: Fitter, replications: int = 200,
        n_draws: int = 99, seed: int = 0, names: list[str] | None = None) -> SBCResult:
    """Run SBC (module docstring): ``replications`` fits, ``n_draws`` posterior draws each."""
    if replications < 1 or n_draws < 1:
        raise ConfigError(f"SBC needs replications >= 1 and n_draws >= 1, got {replications}, "
                          f"{n_draws}")
    gen = torch.Generator().manual_seed(seed)
    ranks = []
    for _ in range(replications):
        truth, data = simulate(gen)
        draws = posterior_draws(data, n_draws, gen)
        if draws.shape != (n_draws, *truth.shape):
            raise ValueError(f"posterior_draws returned {tuple(draws.shape)}, expected "
                             f"({n_draws}, {truth.shape[0]})")
        ranks.append((draws < truth).sum(0).numpy())
    ranks_arr = np.stack(ranks).astype(np.int64)
    return SBCResult(ranks_arr, n_draws,
                     names or [f"stat_{k}" for k in range(ranks_arr.shape[1])])


def plot_ranks(result: SBCResult, bins: int = 10, title: str = "SBC rank histograms"):
    """One rank histogram per statistic with the central 99% band of a uniform bin count
    (Binomial(R, 1/bins)), as in Talts et al. (2018, fig. 1)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = result.histogram(bins)
    k = counts.shape[1]
    cols = min(k, 4)
    rows = -(-k // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 2.4 * rows), squeeze=False)
    n = len(result.ranks)
    low, high = stats.binom.ppf([0.005, 0.995], n, 1 / bins)
    for j, ax in enumerate(axes.flat):
        if j >= k:
            ax.axis("off")
            continue
        ax.axhspan(low, high, color="0.85")
        ax.axhline(n / bins, color="0.5", lw=0.8)
        ax.bar(np.arange(bins), counts[:, j], width=0.9, color="C0")
        ax.set_title(result.names[j], fontsize=8)
        ax.set_xticks([])
    fig.suptitle(title)
    fig.tight_layout()
    return fig


# ----- the Kalman filter and Laplace on a small linear head ----------------------------------
def _problem(n_classes: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed unit class texts (C, D) and a unit probe input (1, D) for the statistics."""
    g = torch.Generator().manual_seed(seed)
    text = F.normalize(torch.randn(n_classes, dim, generator=g, dtype=torch.float64), dim=-1)
    probe = F.normalize(torch.randn(1, dim, generator=g, dtype=torch.float64), dim=-1)
    return text, probe


def _statistics(theta: torch.Tensor, head: Any, probe: torch.Tensor) -> torch.Tensor:
    """(..., K): logits of every class at the probe input, then every class's first weight."""
    w = theta.reshape(*theta.shape[:-1], head.n_classes, head.n_in)
    logits = (w * head.inputs(probe)[0]).sum(-1)
    return torch.cat([logits, w[..., 0]], -1)


def kalman_sbc(
    covariance: str = "full", observation: str = "cosine", n_classes: int = 3, dim: int = 4,
    n_obs: int = 12, prior_var: float = 1.0, obs_var: float = 0.05, scale: float = 5.0,
    batch_size: int = 1, replications: int = 200, n_draws: int = 99, seed: int = 0,
    iterations: int = 1, **cov_options: Any,
) -> SBCResult:
    """SBC of the Kalman filter with a linear head ``z = s (W x + b)``-style prior
    ``vec([W, b]) ~ N(vec([s T, 0]), prior_var I)`` on random unit inputs and uniform labels.

    ``observation="cosine"``: the linear-Gaussian observation of the matched logit over the
    scale, ``u_i = z_{y_i}(x_i) / s + e_i``, ``e_i ~ N(0, obs_var)``, with ``u_i`` simulated
    from the prior (the fitted method observes ``u_i = 1``); the filter is exact where the
    structure can hold the posterior. ``observation="categorical"``: ``y_i ~ Cat(softmax z)``
    assimilated by the extended Kalman filter (an approximation: expect non-uniform ranks);
    ``iterations > 1`` refilters from the prior with every label linearised at the previous
    pass's mean (iterated posterior linearisation, the method's ``iterations``), which moves
    the mean to the mode and the covariance to the Laplace approximation there.
    """
    from pyro_clip.inference.covariance import make_covariance
    from pyro_clip.inference.kalman import KalmanState
    from pyro_clip.inference.kalman_adapters import LinearHead

    if observation not in ("cosine", "categorical"):
        raise ConfigError(f"observation must be cosine or categorical, got {observation!r}")
    text, probe = _problem(n_classes, dim, seed)
    head = LinearHead(text, scale, bias=True)
    mean0 = head.prior_mean()

    def simulate(gen: torch.Generator) -> tuple[torch.Tensor, Any]:
        theta = mean0 + prior_var**0.5 * torch.randn(head.n_params, generator=gen,
                                                     dtype=torch.float64)
        x = F.normalize(torch.randn(n_obs, dim, generator=gen, dtype=torch.float64), dim=-1)
        z = head.logits(theta, x, text)
        if observation == "cosine":
            y = torch.randint(n_classes, (n_obs,), generator=gen)
            u = z.gather(1, y[:, None])[:, 0] / scale
            u = u + obs_var**0.5 * torch.randn(n_obs, generator=gen, dtype=torch.float64)
        else:
            y = torch.multinomial(z.softmax(-1), 1, generator=gen)[:, 0]
            u = None
        return _statistics(theta, head, probe), (x, y, u)

    def filtered(x: torch.Tensor, y: torch.Tensor, u: Any,
                 anchor: torch.Tensor | None) -> KalmanState:
        cov = make_covariance(covariance, head.n_params, prior_var, n_blocks=n_classes,
                              **cov_options)
        state = KalmanState(mean0, cov)
        for idx in torch.arange(n_obs).split(batch_size):
            xb, yb = x[idx], y[idx]
            at = state.mean if anchor is None else anchor
            logits = head.logits(at, xb, text)
            jac = head.jacobian(at, xb, text)
            if observation == "categorical":
                shift = (None if anchor is None else
                         jac.mm((state.mean - anchor)[:, None]).reshape(logits.shape))
                state.update_categorical(jac, logits, yb, shift=shift)
                continue
            select = F.one_hot(yb, n_classes).to(torch.float64).unsqueeze(1) / scale
            resid = u[idx] - logits.gather(1, yb[:, None])[:, 0] / scale
            state.update_gaussian(jac.mix(select), torch.full_like(resid, obs_var), resid)
        return state

    def posterior_draws(data: Any, n: int, gen: torch.Generator) -> torch.Tensor:
        x, y, u = data
        state = filtered(x, y, u, None)
        for _ in range(1, iterations if observation == "categorical" else 1):
            state = filtered(x, y, u, state.mean)
        thetas = state.mean + state.cov.sample(n, gen)
        return _statistics(thetas, head, probe)

    names = [f"logit_{c}" for c in range(n_classes)] + [f"w_{c}0" for c in range(n_classes)]
    return sbc(simulate, posterior_draws, replications, n_draws, seed, names)
