"""Bayesian last layer: a Laplace approximation (laplace-torch) of a zero-shot-centred head.

Prior ``vec(W) ~ N(vec(s T), P^-1 I)`` over the rows of a linear head on normalised features;
the MAP is the ``linear-probe`` solution (penalty chosen on validation), and the posterior is
``N(W_MAP, (GGN + P I)^-1)`` (Daxberger et al., "Laplace Redux", NeurIPS 2021, eq. 2-4) with a
Kronecker-factored GGN by default. ``P`` and a likelihood temperature ``T`` are chosen by
the validation NLL of the predictive (laplace-torch's recommended grid search on validation
data; ``prior_precision=marglik`` keeps the marginal likelihood, eq. 5). Prediction is the GLM
predictive ``f ~ N(W_MAP x, J Sigma J^T)`` by Monte Carlo: ``n_samples`` draws ``f_s / T``
are ``logit_samples`` and ``p = 1/S sum_s softmax(f_s / T)`` (one predictive for
probabilities, PPCs, LOO and OOD scores; :mod:`pyro_clip.inference.predictive`), computed a
chunk of rows at a time (each row's draws from its own seeded stream, so chunking leaves
them unchanged; no (N, C, C) covariance of a whole set is held);
``predictive=probit`` is the approximation ``softmax(mu / sqrt(1 + pi/8 diag var))`` (eq. 9).
A class never trained on has no likelihood term, so its row's posterior *is* its prior:
``f_c ~ N(s cos(x, t_c), 1/P)``, independent of the trained rows (exact, not a fallback).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import pyro.distributions
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from pyro_clip.features.cache import FeatureSet
from pyro_clip.inference.covariance import safe_cholesky
from pyro_clip.inference.kalman import probit_probs
from pyro_clip.inference.posteriors import MatrixNormal, reshape_event
from pyro_clip.inference.predictive import (
    RowSampler,
    choose_probit_temperature,
    choose_temperature,
    chunks,
    mc_predictive,
    row_chunk,
)
from pyro_clip.methods._linear_head import class_mapping, normalize
from pyro_clip.methods.base import Prediction, register_method
from pyro_clip.methods.linear_probe import LinearProbe
from pyro_clip.methods.options import Option, temperature_candidates, temperature_options
from pyro_clip.training.selection import check_validation, log_grid

STRUCTURES = ("kron", "diag", "full")
PRIOR_TUNING = ("marglik", "val", "none")
CHUNK = 256  # examples per GLM-predictive call: Jacobians are (chunk, C, C*D)
#: bytes the (chunk, C, C*D) float64 Jacobians of one predictive call may take
JACOBIAN_BYTES = 2**30


def predictive_chunk(n_classes: int, dim: int) -> int:
    """Examples per GLM-predictive call: :data:`CHUNK`, fewer when their last-layer Jacobians
    ``(chunk, C, C D)`` would exceed :data:`JACOBIAN_BYTES` (at least one)."""
    return max(1, min(CHUNK, JACOBIAN_BYTES // (8 * n_classes * n_classes * dim)))
LAST_LAYER = "1"  # the Linear's name in _head's Sequential


def _head(weight: torch.Tensor) -> nn.Sequential:
    """``Identity -> Linear`` so laplace-torch finds the linear layer as the last layer."""
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=False).double()
    lin.weight.data.copy_(weight)
    return nn.Sequential(nn.Identity(), lin)


def row_noise(seed: int, row: int, n: int, n_classes: int) -> torch.Tensor:
    """Standard normals (n, C) of row ``row``: a Philox stream keyed by ``(seed, row)``, so a
    row's draws are the same whichever rows are drawn with it (and on every device)."""
    gen = np.random.Generator(np.random.Philox(key=((seed % 2**64) << 64) | row))
    return torch.from_numpy(gen.standard_normal((n, n_classes)))


def sample_logits(mean: torch.Tensor, cov: torch.Tensor, n: int, seed: int,
                  first_row: int = 0) -> torch.Tensor:
    """``n`` draws (n, N, C) of ``N(mean_i, cov_i)`` for rows ``first_row + i`` of a set,
    ``f = mean_i + L_i eps`` with ``L_i L_i^T = cov_i`` and ``eps`` from :func:`row_noise`;
    jitter (with a warning) if not PD."""
    chol = safe_cholesky(cov, "laplace logit covariance")
    c = mean.shape[-1]
    eps = torch.stack([row_noise(seed, first_row + i, n, c) for i in range(len(mean))], 1)
    return mean + torch.einsum("nij,snj->sni", chol, eps.to(mean.device, mean.dtype))


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

    OPTIONS: ClassVar[dict[str, Option]] = {
        **LinearProbe.OPTIONS,
        "center": Option("zero-shot", "prior mean of the head (only the zero-shot rows)",
                         choices=("zero-shot",)),
        "hessian_structure": Option("kron", "laplace-torch Hessian (GGN) structure",
                                    choices=STRUCTURES),
        "prior_precision": Option("val", "prior precision P: tuned on validation NLL, by "
                                  "marginal likelihood, kept at the MAP's, or fixed",
                                  float, PRIOR_TUNING, low=0, low_open=True),
        "precision_grid": Option(log_grid(1e-2, 1e4, 13), "candidates for "
                                 "prior_precision=val", list, low=0, low_open=True, item=float),
        **temperature_options(),
        "predictive": Option("mc", "predictive: Monte Carlo over the GLM logits (the "
                             "posterior predictive) or the probit approximation",
                             choices=("mc", "probit")),
        "n_samples": Option(1000, "logit draws of the GLM predictive", int, low=1),
        "chains": Option(4, "ArviZ: the n_samples independent draws split into this many "
                         "chains", int, low=1),
    }

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
        temps = temperature_candidates(self.options)
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

    def _val_temperature(self, xv: torch.Tensor, val: FeatureSet,
                         temps: list[float]) -> tuple[float, dict[str, float]]:
        """Temperature with the smallest validation NLL of the configured predictive."""
        if self.options["predictive"] == "mc":
            return choose_temperature(self._row_sampler(xv, val.classnames, 1.0), val.labels,
                                      temps, chunk=self._chunk(len(val.classnames)))
        mean, var = self._moments(xv, val.classnames)
        return choose_probit_temperature(mean, var, val.labels, temps)

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
        chunk = predictive_chunk(len(self.train_classnames), x.shape[1])
        for start in range(0, len(x), chunk):
            # private but stable laplace-torch call: the public __call__ returns only probs
            f_mu, f_var = self.la._glm_predictive_distribution(x[start:start + chunk])
            rows = slice(start, start + chunk)
            mean[rows, seen] = f_mu[:, mapping[seen]]
            cov[rows, seen.unsqueeze(1), seen] = f_var[:, mapping[seen]][:, :, mapping[seen]]
        return mean, cov

    def _chunk(self, n_classes: int) -> int:
        """Rows per chunk: S draws and a (C, C) covariance per row (:func:`row_chunk`)."""
        return row_chunk(int(self.options["n_samples"]), n_classes, 8 * 3 * n_classes**2)

    def _row_sampler(self, x: torch.Tensor, classnames: Sequence[str], temperature: float,
                     moments: tuple[torch.Tensor, torch.Tensor] | None = None) -> RowSampler:
        """Draws ``f_s(x_rows) / T`` (S, rows, C) of the GLM predictive, one slice of rows at
        a time; with ``moments`` = (mean, var) (N, C), each slice's mean and logit variances
        are written there too."""
        n = int(self.options["n_samples"])

        def rows(r: slice) -> torch.Tensor:
            mean, cov = self.predictive(x[r], classnames)
            if moments is not None:
                moments[0][r], moments[1][r] = mean, cov.diagonal(dim1=1, dim2=2)
            return sample_logits(mean, cov, n, self.ctx.seed, r.start) / temperature
        return rows

    def _moments(self, x: torch.Tensor, classnames: Sequence[str]
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """GLM predictive mean and variance of the logits (N, C), a chunk of rows at a time."""
        parts = [self.predictive(x[r], classnames)
                 for r in chunks(len(x), self._chunk(len(classnames)))]
        return (torch.cat([m for m, _ in parts]),
                torch.cat([c.diagonal(dim1=1, dim2=2) for _, c in parts]))

    def predict(self, features: torch.Tensor, classnames: Sequence[str]) -> Prediction:
        t, c = self.temperature, len(classnames)
        mean = features.new_empty(len(features), c, dtype=torch.float64)
        moments = (mean, torch.empty_like(mean))
        mc = mc_predictive(self._row_sampler(features, classnames, t, moments), len(features),
                           int(self.options["n_samples"]), c, seed=self.ctx.seed + 3,
                           chains=int(self.options["chains"]), chunk=self._chunk(c))
        probs = (mc.probs if self.options["predictive"] == "mc"
                 else probit_probs(mean / t, moments[1] / t**2))
        return Prediction(probs.float(), mc.logit_samples, mc.mutual_information.float(),
                          mc.replicates)

    def logit_posterior(
        self, features: torch.Tensor, classnames: Sequence[str]
    ) -> pyro.distributions.MultivariateNormal:
        """The GLM predictive ``f(x_i) / T ~ N(W_MAP x_i / T, J_i Sigma J_i^T / T^2)``
        (Laplace Redux eq. 8; ``T`` the temperature, as in :meth:`predict`)."""
        mean, cov = self.predictive(features, classnames)
        t = self.temperature
        chol = safe_cholesky(cov, "laplace logit covariance")
        return pyro.distributions.MultivariateNormal(mean / t, scale_tril=chol / t)

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

    @torch.no_grad()
    def posterior(self) -> torch.distributions.Distribution:
        """The Laplace posterior ``N(W_MAP, (GGN + P I)^-1)`` over the trained head's weights
        ``W`` (C, D) of ``f = W x`` on the normalised features, event (C, D), row c for
        ``train_classnames[c]``, laid out as laplace-torch's row-major parameter vector.

        ``kron``: the precision is ``(Q_1 kron Q_2) diag(l_1 l_2^T + P) (Q_1 kron Q_2)^T``
        (laplace-torch's eigendecomposed factors), a :class:`MatrixNormal` with eigen-variances
        ``1 / (l_1 l_2^T + P)``; ``diag``: independent normals; ``full``: one multivariate
        normal with the posterior precision.
        """
        shape = tuple(self.weight.shape)
        mean = self.la.mean.detach().double()
        structure = self.options["hessian_structure"]
        if structure == "kron":
            prec = self.la.posterior_precision
            (q_rows, q_cols), (l_rows, l_cols) = prec.eigenvectors[0], prec.eigenvalues[0]
            if q_rows.shape[0] != shape[0] or q_cols.shape[0] != shape[1]:
                raise RuntimeError(f"laplace: unexpected Kronecker factor shapes "
                                   f"{tuple(q_rows.shape)}, {tuple(q_cols.shape)} for {shape}")
            var = 1.0 / (torch.outer(l_rows, l_cols) + prec.deltas[0])
            return MatrixNormal(mean.reshape(shape), q_rows.double(), q_cols.double(),
                                var.double())
        if structure == "diag":
            std = self.la.posterior_variance.detach().double().sqrt()
            return pyro.distributions.Normal(mean.reshape(shape), std.reshape(shape)).to_event(2)
        prec = self.la.posterior_precision.detach().double()
        return reshape_event(pyro.distributions.MultivariateNormal(
            mean, precision_matrix=0.5 * (prec + prec.T)), shape)

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

