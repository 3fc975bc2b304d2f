"""OVE-PG (Kim et al., arXiv 2504.14123, AISTATS 2025) as a Pyro model/guide pair.

Notation: ``f`` (B, C) logits of the prompt learner, ``f0`` frozen zero-shot logits (hand
templates), ``A_y f`` the one-vs-each differences ``psi_j = f_y - f_j`` (j != y).

* OVE likelihood (Titsias 2016; paper eq. 4): ``log p(y|f) ~= sum_{j!=y} log sigmoid(f_y - f_j)``,
  a lower bound on the softmax log-likelihood.
* Pólya-Gamma augmentation (Polson et al. 2013; paper eq. 6): given ``omega ~ PG(1, c)`` the
  likelihood is Gaussian in psi, ``exp(kappa psi - omega psi^2 / 2)`` with ``kappa = 1/2``
  (every pair is a "y beats j" success), ``c = A_y f0`` drawn without gradient.
* Conditional Gaussian over the OVE logits (paper eq. 8): with prior ``psi ~ N(A_y f, 1/alpha)``,
  ``psi | omega ~ N(Sigma (alpha A_y f + kappa), Sigma)``, ``Sigma = 1 / (omega + alpha)``.
* Loss (paper eq. 10): ``mean_b (1/M) sum_m -log OVE(y_b | psi_bm)`` at M reparameterised draws
  ``+ lambda * mean((f - f0)^2)`` (the KL between equal-covariance Gaussians over logits).

Pyro form, with the paper's Gaussian posterior over logits: prior ``p(f | x) = N(f0, alpha^-1 I)``
and posterior ``q(f | x) = N(f_learner, alpha^-1 I)``. Equal covariances make
``KL(q || p) = (alpha/2) |f_learner - f0|^2``, which is ``-log p(f_learner)`` up to a constant,
so training can use the guide's mean ``f ~ Delta(f_learner)`` (:func:`ove_pg_guide`) and still
optimise the Gaussian ELBO exactly; ``lambda`` weights the KL as in the paper (the prior site
is scaled by ``2 lambda / (alpha C)``, giving ``lambda * mean_c (f - f0)^2``; ``lambda = 0``
masks it). The model samples ``psi`` from the conditional Gaussian in a ``plate`` of size M and
scores the OVE likelihood with ``pyro.factor``; its observed site ``y ~ Cat(softmax f)`` is
masked in the ELBO because the PG-augmented factor carries that observation's likelihood.
``Trace_ELBO`` gives exactly the paper's loss plus the prior's scaled normalising constant,
which :func:`ove_pg_loss` subtracts (it has no gradient). With ``labels=None`` the model
predicts: ``pyro.infer.Predictive(ove_pg_model, guide=ove_pg_posterior_guide)`` draws
``f ~ q`` and ``y ~ Cat(softmax f)`` (:func:`ove_pg_posterior_predictive`); without a guide it
gives the prior predictive around the zero-shot logits.

Differences from the official code (github MingyuKim87/BP_CLIP, trainers/coop_ove_pg.py):
1. it sets ``omega = tanh(c/2)/c`` (twice the PG mean) after clamping ``c >= 1e-8`` (so every
   negative c gives 0.5); here omega is a real PG(1, c) draw (``omega="sample"``, default) or
   the true mean ``tanh(c/2)/(2c)`` (``omega="mean"``; c -> 0 limit 1/4);
2. it tiles kappa across the batch instead of aligning it with each example's pairs, which is
   misaligned for batch > 1; here each example's ``psi`` is built from its own label, so
   ``kappa = 1/2`` for every entry by construction.
As in the official code (and the paper's eq. 8), the conditional mean uses the learner's
``A_y f`` so that the gradient reaches the prompts; omega's tilt uses the frozen ``A_y f0``.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import numpy as np
import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro import poutine
from pyro.infer import Predictive, Trace_ELBO

from pyro_clip.errors import ConfigError
from pyro_clip.models.polya_gamma import pg_mean, sample_pg

KAPPA = 0.5
#: posterior draws of the logits behind OVE-PG prompt learners' predict() (probabilities,
#: PPC replicates and LOO all come from them)
PREDICTIVE_DRAWS = 1000


@dataclass
class OvePGConfig:
    """``alpha`` prior precision of psi, ``lam`` KL weight, ``num_samples`` M, ``omega`` mode.

    Paper defaults: alpha = 1, lambda = 0.2 (CoOp) / 0.1 (CoCoOp), M = 1.
    """

    alpha: float = 1.0
    lam: float = 0.2
    num_samples: int = 1
    omega: str = "sample"

    def validate(self) -> OvePGConfig:
        if not (isinstance(self.alpha, (int, float)) and math.isfinite(self.alpha)
                and self.alpha > 0):
            raise ConfigError(f"OVE-PG alpha (prior precision) must be a finite number > 0, "
                              f"got {self.alpha!r}; the paper uses alpha=1")
        if not (isinstance(self.lam, (int, float)) and math.isfinite(self.lam) and self.lam >= 0):
            raise ConfigError(f"OVE-PG lambda (KL weight) must be a finite number >= 0, got "
                              f"{self.lam!r}; the paper uses 0.2 for CoOp, 0.1 for CoCoOp")
        if isinstance(self.num_samples, bool) or not isinstance(self.num_samples, int) \
                or self.num_samples < 1:
            raise ConfigError(f"OVE-PG num_samples (M) must be an integer >= 1, got "
                              f"{self.num_samples!r}; the paper uses M=1")
        if self.omega not in ("sample", "mean"):
            raise ConfigError(f"OVE-PG omega must be 'sample' (PG draws) or 'mean' "
                              f"(tanh(c/2)/(2c)), got {self.omega!r}")
        return self


def ove_differences(f: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``A_y f``: (..., B, C) logits -> (..., B, C-1) differences ``f_y - f_j`` over ``j != y``.

    Leading sample dimensions (e.g. from ``pyro.infer.Predictive``) broadcast over ``labels``.
    """
    b, c = f.shape[-2:]
    lead = f.shape[:-2]
    diff = f.gather(-1, labels.expand(*lead, b)[..., None]) - f
    keep = torch.ones(b, c, dtype=torch.bool, device=f.device)
    keep[torch.arange(b, device=f.device), labels] = False
    return diff[..., keep].reshape(*lead, b, c - 1)


def ove_log_likelihood(f: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``sum_{j != y} log sigmoid(f_y - f_j)`` per example (B,) (paper eq. 4)."""
    return F.logsigmoid(ove_differences(f, labels)).sum(-1)


def conditional_psi(
    prior_mean: torch.Tensor, omega: torch.Tensor, alpha: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Loc, scale of ``psi | omega ~ N(Sigma (alpha m + kappa), Sigma)``, Sigma = 1/(omega+alpha).

    Product of the prior ``N(m, 1/alpha)`` and the PG-augmented likelihood
    ``exp(kappa psi - omega psi^2 / 2)`` (paper eq. 8, Polson et al. 2013 eq. 4).
    """
    var = 1.0 / (omega + alpha)
    return var * (alpha * prior_mean + KAPPA), var.sqrt()


def draw_omega(
    f0: torch.Tensor, labels: torch.Tensor, omega: str, rng: np.random.Generator
) -> torch.Tensor:
    """``omega ~ PG(1, A_y f0)`` (or its mean), (B, C-1), no gradient."""
    c = ove_differences(f0.detach(), labels)
    return sample_pg(c, rng) if omega == "sample" else pg_mean(c)


def _prior_weight(n_classes: int, cfg: OvePGConfig) -> float:
    """Scale ``2 lambda / (alpha C)`` of the prior site: ``(alpha/2) |f-f0|^2`` becomes
    ``lambda/C sum_c (f-f0)^2`` (the paper's KL weight); 1 when ``lambda = 0`` (masked)."""
    return 2 * cfg.lam / (cfg.alpha * n_classes) if cfg.lam > 0 else 1.0


def _prior_constant(n_classes: int, cfg: OvePGConfig) -> float:
    """The scaled normalising constant ``w (C/2) log(2 pi / alpha)`` of the prior site."""
    return _prior_weight(n_classes, cfg) * 0.5 * n_classes * math.log(2 * math.pi / cfg.alpha)


def ove_pg_model(f_learner, f0, labels, omega, cfg: OvePGConfig) -> None:
    """p: ``f ~ N(f0, alpha^-1 I)``; observed ``y ~ Cat(softmax f)`` (masked: the augmented OVE
    factor carries it); ``psi ~ N(Sigma(alpha A_y f + kappa), Sigma)`` x M and the OVE factor.
    ``labels=None``: only ``f`` and a sampled ``y`` (prediction)."""
    b, c = f0.shape[-2:]
    m = cfg.num_samples
    with pyro.plate("data", b, dim=-1), poutine.scale(scale=1.0 / b):
        with poutine.mask(mask=cfg.lam > 0), poutine.scale(scale=_prior_weight(c, cfg)):
            f = pyro.sample("f", dist.Normal(f0, cfg.alpha ** -0.5).to_event(1))
        if labels is None:
            pyro.sample("y", dist.Categorical(logits=f))
            return
        with poutine.mask(mask=False):
            pyro.sample("y", dist.Categorical(logits=f), obs=labels)
        loc, scale = conditional_psi(ove_differences(f, labels), omega, cfg.alpha)
        with pyro.plate("samples", m, dim=-2), poutine.scale(scale=1.0 / m):
            psi = pyro.sample("psi", dist.Normal(loc, scale).to_event(1))
            pyro.factor("ove", F.logsigmoid(psi).sum(-1))


def ove_pg_guide(f_learner, f0, labels, omega, cfg: OvePGConfig) -> None:
    """Training guide: q's mean ``f ~ Delta(f_learner)`` (exact for the equal-covariance KL, see
    the module docstring); psi from the same conditional."""
    b = f0.shape[-2]
    with pyro.plate("data", b, dim=-1), poutine.scale(scale=1.0 / b):
        f = pyro.sample("f", dist.Delta(f_learner, event_dim=1))
        loc, scale = conditional_psi(ove_differences(f, labels), omega, cfg.alpha)
        with pyro.plate("samples", cfg.num_samples, dim=-2), poutine.scale(
            scale=1.0 / cfg.num_samples
        ):
            pyro.sample("psi", dist.Normal(loc, scale).to_event(1))


class DeviceTraceELBO(Trace_ELBO):
    """``Trace_ELBO.differentiable_loss`` without its two host syncs per call.

    Pyro's version returns ``loss + (surrogate - surrogate.item())`` and checks the value for
    NaN, each a device->host copy that stalls a GPU step. Same value and gradient with
    ``surrogate.detach()`` (Pyro's own ``JitTrace_ELBO`` form); NaN is caught by the training
    loop's guard (:mod:`pyro_clip.training.loop`).
    """

    def differentiable_loss(self, model, guide, *args, **kwargs):
        loss, surrogate = 0.0, 0.0
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            particle, surrogate_particle = self._differentiable_loss_particle(model_trace,
                                                                              guide_trace)
            loss = loss + particle / self.num_particles
            surrogate = surrogate + surrogate_particle / self.num_particles
        return loss + (surrogate - surrogate.detach())



def ove_pg_posterior_guide(f_learner, f0, labels, omega, cfg: OvePGConfig) -> None:
    """The paper's Gaussian posterior over logits ``q(f | x) = N(f_learner, alpha^-1 I)``."""
    with pyro.plate("data", f_learner.shape[-2], dim=-1):
        pyro.sample("f", dist.Normal(f_learner, cfg.alpha ** -0.5).to_event(1))


def ove_pg_posterior(f_learner: torch.Tensor, cfg: OvePGConfig) -> torch.distributions.Distribution:
    """``q(f | x) = N(f_learner, alpha^-1 I)`` as a torch distribution (batch (B,), event (C,))."""
    return dist.Normal(f_learner, cfg.alpha ** -0.5).to_event(1)


def ove_pg_posterior_predictive(
    f_learner: torch.Tensor, f0: torch.Tensor, cfg: OvePGConfig, num_samples: int, seed: int = 0,
    prior: bool = False,
) -> dict[str, torch.Tensor]:
    """``{"f": (S, B, C), "y": (S, B)}`` from ``pyro.infer.Predictive`` on :func:`ove_pg_model`
    with ``labels=None``: posterior predictive (guide :func:`ove_pg_posterior_guide`), or the
    prior predictive around ``f0`` when ``prior=True``. Seeded; global RNG state restored."""
    guide = None if prior else ove_pg_posterior_guide
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        out = Predictive(ove_pg_model, guide=guide, num_samples=num_samples, parallel=True,
                         return_sites=("f", "y"))(f_learner.detach(), f0.detach(), None, None,
                                                   cfg)
    b, c = f0.shape[-2:]
    return {"f": out["f"].reshape(num_samples, b, c), "y": out["y"].reshape(num_samples, b)}


_ELBO = DeviceTraceELBO(max_plate_nesting=2)


def ove_pg_loss(
    f_learner: torch.Tensor,
    f0: torch.Tensor,
    labels: torch.Tensor,
    cfg: OvePGConfig,
    rng: np.random.Generator,
    omega: torch.Tensor | None = None,
) -> torch.Tensor:
    """The paper's loss (eq. 10) from the Pyro model/guide: ``Trace_ELBO`` minus a constant.

    ``omega`` may be given (tests); otherwise it is drawn by :func:`draw_omega`. The M psi
    draws are one batched reparameterised sample (a ``plate``), not M backward passes.
    """
    f0 = f0.detach().to(f_learner.dtype)
    if omega is None:
        omega = draw_omega(f0, labels, cfg.omega, rng)
    # distribution argument checks are host syncs too: on the GPU the inputs are checked once
    # by construction (omega > 0 from the sampler, finite logits by the NaN guard)
    checks = contextlib.nullcontext() if not f_learner.is_cuda else pyro.validation_enabled(False)
    with checks:
        loss = _ELBO.differentiable_loss(ove_pg_model, ove_pg_guide, f_learner, f0, labels,
                                         omega, cfg)
    if cfg.lam > 0:  # -log p(f) carries the constant +w (C/2) log(2 pi / alpha)
        loss = loss - _prior_constant(f0.shape[-1], cfg)
    return loss
