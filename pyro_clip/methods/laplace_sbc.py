"""Simulation-based calibration of the ``laplace`` method's posterior (Talts et al. 2018).

Lives beside the method because it fits the method's own MAP solver and laplace-torch
posterior; the generic machinery is :mod:`pyro_clip.diagnostics.sbc`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from pyro_clip.diagnostics.sbc import SBCResult, _problem, _statistics, sbc
from pyro_clip.inference.kalman_adapters import LinearHead
from pyro_clip.methods._linear_head import fit_logistic
from pyro_clip.methods.laplace_head import CHUNK, _make_laplace


def laplace_sbc(
    n_classes: int = 3, dim: int = 4, n_obs: int = 30, prior_precision: float = 1.0,
    scale: float = 5.0, hessian_structure: str = "full", replications: int = 200,
    n_draws: int = 99, seed: int = 0,
) -> SBCResult:
    """SBC of the last-layer Laplace posterior (laplace-torch) of ``z = W x``,
    ``vec(W) ~ N(vec(s T), I / prior_precision)``, ``y_i ~ Cat(softmax z_i)``: the MAP by
    L-BFGS (the ``laplace`` method's solver), then ``N(W_MAP, (GGN + P I)^-1)``."""
    text, probe = _problem(n_classes, dim, seed)
    head = LinearHead(text, scale, bias=False)
    w0 = scale * text

    def simulate(gen: torch.Generator) -> tuple[torch.Tensor, Any]:
        w = w0 + prior_precision**-0.5 * torch.randn(w0.shape, generator=gen,
                                                     dtype=torch.float64)
        x = F.normalize(torch.randn(n_obs, dim, generator=gen, dtype=torch.float64), dim=-1)
        y = torch.multinomial((x @ w.T).softmax(-1), 1, generator=gen)[:, 0]
        return _statistics(w.flatten(), head, probe), (x, y)

    def posterior_draws(data: Any, n: int, gen: torch.Generator) -> torch.Tensor:
        x, y = data
        # mean CE + lam/2 |W - W0|^2 is the negative log joint / N with precision lam N
        w_map, _ = fit_logistic(x, y, w0, prior_precision / n_obs, False, None, 500)
        la = _make_laplace(w_map, hessian_structure, prior_precision=prior_precision,
                           prior_mean=w0.flatten())
        la.fit(DataLoader(TensorDataset(x, y), batch_size=CHUNK))
        eps = torch.randn(n, head.n_params, generator=gen, dtype=torch.float64)
        cov = la.posterior_covariance.double()
        thetas = w_map.flatten() + eps @ torch.linalg.cholesky(cov).T
        return _statistics(thetas, head, probe)

    names = [f"logit_{c}" for c in range(n_classes)] + [f"w_{c}0" for c in range(n_classes)]
    return sbc(simulate, posterior_draws, replications, n_draws, seed, names)
