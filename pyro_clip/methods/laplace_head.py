"""Bayesian last layer: a Laplace approximation (laplace-torch) of a zero-shot-centred head.

Prior ``vec(W) ~ N(vec(s T), P^-1 I)`` over the rows of a linear head on normalised features;
the MAP is the ``linear-probe`` solution (penalty chosen on validation), and the posterior is
``N(W_MAP, (GGN + P I)^-1)`` (Daxberger et al., "Laplace Redux", NeurIPS 2021, eq. 2-4) with a
Kronecker-factored GGN by default. ``P`` and a likelihood temperature ``T`` are chosen by
the validation NLL of the predictive (laplace-torch's recommended grid search on validation
data; ``prior_precision=marglik`` keeps the marginal likelihood, eq. 5). Prediction is the GLM
predictive ``f ~ N(W_MAP x, J Sigma J^T)`` by Monte Carlo: ``n_samples`` draws ``f_s / T``
are ``logit_samples`` and ``p = 1/S sum_s softmax(f_s / T)`` (one predictive for
probabilities, PPCs, LOO and OOD scores; :mod:`pyro_clip.inference.predictive`);
``predictive=probit`` is the approximation ``softmax(mu / sqrt(1 + pi/8 diag var))`` (eq. 9).
A class never trained on has no likelihood term, so its row's posterior *is* its prior:
``f_c ~ N(s cos(x, t_c), 1/P)``, independent of the trained rows (exact, not a fallback).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any, ClassVar

import pyro.distributions
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from pyro_clip.errors import ConfigError
from pyro_clip.features.cache import FeatureSet
from pyro_clip.inference.predictive import TEMPERATURE_GRID, choose_temperature, mc_probs
from pyro_clip.methods._linear_head import class_mapping, normalize
from pyro_clip.methods.base import Prediction, register_method
from pyro_clip.methods.linear_probe import LinearProbe
from pyro_clip.training.selection import check_validation, log_grid

STRUCTURES = ("kron", "diag", "full")
PRIOR_TUNING = ("marglik", "val", "none")
CHUNK = 256  # examples per GLM-predictive call: Jacobians are (chunk, C, C*D)
LAST_LAYER = "1"  # the Linear's name in _head's Sequential


def _head(weight: torch.Tensor) -> nn.Sequential:
    """``Identity -> Linear`` so laplace-torch finds the linear layer as the last layer."""
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=False).double()
    lin.weight.data.copy_(weight)
    return nn.Sequential(nn.Identity(), lin)


def probit_probs(mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """``softmax(mu_c / sqrt(1 + pi/8 Var f_c))`` (MacKay 1992; Laplace Redux eq. 9)."""
    return torch.softmax(mean / torch.sqrt(1 + math.pi / 8 * var.diagonal(dim1=1, dim2=2)), -1)


def logit_cholesky(cov: torch.Tensor) -> torch.Tensor:
    """Cholesky factors (N, C, C) of the logit covariances; jitter (with a warning) if not PD."""
    eye = torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)
    jitter = 0.0
    for attempt in range(8):
        chol, info = torch.linalg.cholesky_ex(cov + jitter * eye)
        if not info.any():
            break
        jitter = 1e-10 * 10 ** attempt * float(cov.diagonal(dim1=1, dim2=2).mean())
    else:
        raise ConfigError("logit covariance is not positive definite even with jitter; "
                          "raise the prior precision")
    if jitter:
        warnings.warn(f"laplace: added jitter {jitter:.2e} to the logit covariance", stacklevel=3)
    return chol


def sample_logits(mean: torch.Tensor, cov: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """``n`` draws (n, N, C) of ``N(mean_i, cov_i)``; jitter (with a warning) if not PD."""
    chol = logit_cholesky(cov)
    gen = torch.Generator().manual_seed(seed)  # CPU draws: the same samples on every device
    eps = torch.randn((n, *mean.shape), generator=gen, dtype=mean.dtype,
                      device=gen.device).to(mean.device)
    return mean + torch.einsum("nij,snj->sni", chol, eps)


def _make_laplace(weight: torch.Tensor, structure: str, **kwargs: Any):
    """Last-layer classification Laplace of the linear head ``weight``.

    laplace-torch is imported here, not at module import: it pulls in asdl and backpack
    (seconds of import time and deprecation warnings) for every ``pyro-clip`` command.
    The last layer is named (``LAST_LAYER``) rather than found from a batch: laplace-torch
    then knows ``n_params`` at construction, which its ``load_state_dict`` needs to accept
    the (C*D,) prior mean (else ``ValueError: Invalid length of prior mean`` on reload).
    """
    from laplace import Laplace

    return Laplace(_head(weight), "classification", subset_of_weights="last_layer",
                   hessian_structure=structure, last_layer_name=LAST_LAYER, **kwargs)


@register_method
class LaplaceHead(LinearProbe):
    """Last-layer Laplace on the zero-shot-centred linear probe (see module docstring)."""

    name = "laplace"
    demo_options: ClassVar[dict] = {}  # the demo runs the defaults

    @classmethod
    def default_options(cls) -> dict[str, Any]:
        return {**super().default_options(), "hessian_structure": "kron",
                "prior_precision": "val", "precision_grid": log_grid(1e-2, 1e4, 13),
                "temperature": "auto", "temperature_grid": list(TEMPERATURE_GRID),
                "predictive": "mc", "n_samples": 1000, "chains": 4}

    def _check_options(self) -> None:
        super()._check_options()
        o = self.options
        if o["center"] != "zero-shot":
            raise ConfigError("laplace: the prior is centred at the zero-shot head; "
                              "remove --opt center=... (only 'zero-shot' is supported)")
        if o["hessian_structure"] not in STRUCTURES:
            raise ConfigError(f"laplace: hessian_structure must be one of {STRUCTURES}, "
                              f"got {o['hessian_structure']!r}")
        tuning = o["prior_precision"]
        if not (tuning in PRIOR_TUNING or (isinstance(tuning, int | float) and tuning > 0)):
            raise ConfigError(f"laplace: prior_precision must be one of {PRIOR_TUNING} or a "
                              f"number > 0, got {tuning!r}")
        if int(o["n_samples"]) < 1:
            raise ConfigError(f"laplace: n_samples must be >= 1, got {o['n_samples']}")
        if o["predictive"] not in ("mc", "probit"):
            raise ConfigError(f"laplace: predictive must be mc or probit, got "
                              f"{o['predictive']!r}; use --opt predictive=mc|probit")
        temps = (list(o["temperature_grid"]) if o["temperature"] == "auto"
                 else [o["temperature"]])
        if not temps or any(not isinstance(t, int | float) or t <= 0 for t in temps):
            raise ConfigError(f"laplace: temperature must be auto or a number > 0 and "
                              f"temperature_grid non-empty and positive, got "
                              f"{o['temperature']!r}, {o['temperature_grid']!r}")

    def fit(self, train: FeatureSet, val: FeatureSet) -> None:
        super().fit(train, val)  # MAP head, penalty lam chosen on validation
        x, y = normalize(train.features[self.feature_kind]), train.labels
        lam = float(self.selected["lam"])
        prior_mean = self.head_prior(train.classnames)
        tuning = self.options["prior_precision"]
        # mean CE + lam/2 |W - W0|^2 is the negative log joint / N with precision P = lam N
        init_precision = float(tuning) if isinstance(tuning, int | float) else lam * len(y)
        self.la = _make_laplace(self.weight, self.options["hessian_structure"],
                                prior_precision=init_precision, prior_mean=prior_mean.flatten())
        self.la.fit(DataLoader(TensorDataset(x, y), batch_size=CHUNK))
        map_selected = dict(self.selected)
        self.temperature = 1.0
        temps = self._temperatures()
        table: dict[str, dict[str, float]] = {}
        if tuning == "marglik":
            self.la.optimize_prior_precision(pred_type="glm", method="marglik",
                                             init_prior_prec=init_precision)
        precisions = (self.options["precision_grid"] if tuning == "val" else [self.precision])
        if tuning == "val" or len(temps) > 1:
            check_validation(val, self.name)
            xv = val.features[self.feature_kind]
            best = None
            for prec in precisions:
                self.la.prior_precision = float(prec)
                t, table[str(float(prec))] = self._val_temperature(xv, val, temps)
                nll = table[str(float(prec))][str(t)]
                if best is None or nll < best[0]:
                    best = (nll, float(prec), t)
            assert best is not None
            _, prec, self.temperature = best
            self.la.prior_precision = prec
        else:
            self.temperature = temps[0]
        self.selected = {"map": map_selected, "prior_precision": self.precision,
                         "prior_precision_tuning": tuning, "temperature": self.temperature,
                         "val_nll_by_precision_and_temperature": table,
                         "log_marglik": float(self.la.log_marginal_likelihood().detach())}

    def _temperatures(self) -> list[float]:
        o = self.options
        return ([float(t) for t in o["temperature_grid"]] if o["temperature"] == "auto"
                else [float(o["temperature"])])

    def _val_temperature(self, xv: torch.Tensor, val: FeatureSet,
                         temps: list[float]) -> tuple[float, dict[str, float]]:
        """Temperature with the smallest validation NLL of the configured predictive."""
        mean, cov = self.predictive(xv, val.classnames)
        if self.options["predictive"] == "mc":
            samples = sample_logits(mean, cov, int(self.options["n_samples"]), self.ctx.seed)
            return choose_temperature(samples, val.labels, temps)
        idx = torch.arange(len(val))
        nlls = {str(t): float(-probit_probs(mean / t, cov / t**2)[idx, val.labels]
                              .clamp_min(1e-12).log().mean()) for t in temps}
        return float(min(nlls, key=nlls.__getitem__)), nlls

    @property
    def precision(self) -> float:
        return float(self.la.prior_precision.reshape(-1)[0])

    @torch.no_grad()
    def predictive(
        self, features: torch.Tensor, classnames: Sequence[str]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """GLM predictive mean (N, C) and covariance (N, C, C) of the logits over ``classnames``."""
        mapping = class_mapping(classnames, self.train_classnames)
        seen = (mapping >= 0).nonzero().flatten()
        x = normalize(features)
        zs = x @ (self.ctx.backbone.logit_scale * self.ctx.text_classifier(classnames).double()).T
        mean = zs.clone()
        cov = torch.diag_embed(torch.full_like(zs, 1.0 / self.precision))  # prior rows: 1/P
        for start in range(0, len(x), CHUNK):
            # private but stable laplace-torch call: the public __call__ returns only probs
            f_mu, f_var = self.la._glm_predictive_distribution(x[start:start + CHUNK])
            rows = slice(start, start + CHUNK)
            mean[rows, seen] = f_mu[:, mapping[seen]]
            cov[rows, seen.unsqueeze(1), seen] = f_var[:, mapping[seen]][:, :, mapping[seen]]
        return mean, cov

    def predict(self, features: torch.Tensor, classnames: Sequence[str]) -> Prediction:
        mean, cov = self.predictive(features, classnames)
        t = self.temperature
        samples = sample_logits(mean, cov, int(self.options["n_samples"]), self.ctx.seed) / t
        probs = (mc_probs(samples) if self.options["predictive"] == "mc"
                 else probit_probs(mean / t, cov / t**2))
        return Prediction(probs.float(), samples.float())

    def logit_posterior(
        self, features: torch.Tensor, classnames: Sequence[str]
    ) -> pyro.distributions.MultivariateNormal:
        """The GLM predictive ``f(x_i) / T ~ N(W_MAP x_i / T, J_i Sigma J_i^T / T^2)``
        (Laplace Redux eq. 8; ``T`` the temperature, as in :meth:`predict`)."""
        mean, cov = self.predictive(features, classnames)
        t = self.temperature
        return pyro.distributions.MultivariateNormal(mean / t,
                                                     scale_tril=logit_cholesky(cov) / t)

    @torch.no_grad()
    def logit_prior(
        self, features: torch.Tensor, classnames: Sequence[str]
    ) -> pyro.distributions.Distribution:
        """``vec(W) ~ N(vec(s T), P^-1 I)`` pushed through ``f = W x``, ``|x| = 1``: independent
        ``f_c ~ N(s cos(x, t_c), 1/P)`` (the zero-shot logits with prior variance 1/P), over the
        temperature as in :meth:`predict`."""
        x = normalize(features)
        zs = x @ (self.ctx.backbone.logit_scale * self.ctx.text_classifier(classnames).double()).T
        t = self.temperature
        return pyro.distributions.Normal(zs / t, self.precision ** -0.5 / t).to_event(1)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "laplace": self.la.state_dict(),
                "temperature": self.temperature}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        lap = state["laplace"]
        self.la = _make_laplace(self.weight, self.options["hessian_structure"],
                                prior_mean=lap["prior_mean"])
        self.la.load_state_dict(lap)
        self.temperature = float(state.get("temperature", 1.0))

