"""The Pyro model shared by every Bayesian method's posterior predictive.

``f_i ~ q(f | x_i)`` (a distribution of the logits: a method's predictive, or its
:meth:`~pyro_clip.methods.Method.logit_prior`), ``y_i ~ Cat(softmax f_i)``, observed site
``y``. With ``y=None``, ``pyro.infer.Predictive`` returns draws of ``f`` (S, N, C) and ``y``
(S, N): the posterior predictive ``p(y* | x, D) = E_q[Cat(y*; softmax f)]`` (BDA3 eq. 1.4)
sampled jointly per draw.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions.torch_distribution import TorchDistributionMixin
from pyro.infer import Predictive


def logit_model(logits: torch.distributions.Distribution, y: torch.Tensor | None = None):
    """``f ~ logits`` (batch (N,), event (C,)); ``y ~ Categorical(logits=f)``, observed if given."""
    if not isinstance(logits, TorchDistributionMixin):
        raise TypeError(
            f"logits must be a pyro.distributions distribution, got {type(logits).__name__}; "
            "build it from pyro.distributions (e.g. pyro.distributions.MultivariateNormal)"
        )
    if logits.event_shape.numel() < 1 or len(logits.batch_shape) != 1:
        raise ValueError(
            f"logits must be a distribution with batch shape (N,) and event shape (C,), got "
            f"batch {tuple(logits.batch_shape)}, event {tuple(logits.event_shape)}; wrap an "
            "independent Normal with .to_event(1)"
        )
    with pyro.plate("data", logits.batch_shape[0], dim=-1):
        f = pyro.sample("f", logits)
        return pyro.sample("y", dist.Categorical(logits=f), obs=y)


def posterior_predictive(
    logits: torch.distributions.Distribution, num_samples: int, seed: int = 0
) -> dict[str, torch.Tensor]:
    """``{"f": (S, N, C), "y": (S, N)}`` from ``Predictive(logit_model)``, seeded (the global
    RNG state is restored afterwards)."""
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # pyro samples through torch; numpy/random untouched
        out = Predictive(logit_model, num_samples=num_samples, parallel=True,
                         return_sites=("f", "y"))(logits)
    return {"f": out["f"].reshape(num_samples, *logits.batch_shape, *logits.event_shape),
            "y": out["y"].reshape(num_samples, *logits.batch_shape)}
