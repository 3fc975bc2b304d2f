"""``kalman``: Bayesian natural-gradient adapters fitted by Kalman filtering (arXiv 2511.01694).

The adapter weights get a Gaussian prior centred on the zero-shot model and are updated one
minibatch at a time by :class:`~pyro_clip.inference.kalman.KalmanState`:

* ``observation=categorical``: labels through the extended Kalman filter with covariance
  ``diag(p) - p p^T`` -- an online natural-gradient step (Ollivier 2018, Thm. 2);
* ``observation=cosine``: the paper's Gaussian observation of the matched image-text cosine
  with target 1, adaptive noise ``R_k = a R_k-1 + (1-a)(e^2 + H P H^T)`` (Akhlaghi et al.
  2017, eq. 18 -- the paper states R_k is adaptive without giving its rule) and a Mahalanobis
  gate on the innovation (chi^2_1 quantile ``gate``).

Covariance structures: ``full``, ``block``, ``diag``, ``lowrank`` and the Kronecker-factored
``kron`` (:mod:`pyro_clip.inference.covariance.kron`, for ImageNet-sized heads); the fitted
posterior is handed back as a Pyro distribution by :meth:`KalmanAdapter.posterior`.
The linear head may run on centred (``center_inputs``) and principal-axis rotated
(``rotate_inputs``) features, an exact reparametrisation for ``full``/``block``/``kron`` that
lets ``diag`` and ``lowrank`` approximate the information in a better basis; ``posterior()``
maps back to the original weights.

One posterior predictive (:mod:`pyro_clip.inference.predictive`): ``S = mc_samples`` weight
draws ``theta_s ~ N(mu, P)``, fixed per fitted state, give logits ``f_s(x) / T`` and
``p(y | x, D) = 1/S sum_s softmax(f_s(x) / T)``; ``predict``'s probabilities, its
``logit_samples`` (the PPC replicates, ArviZ log-likelihood and LOO) and the entropy /
mutual-information OOD scores all come from these draws. The prior variance (in units of the
squared logit scale, so the grid follows the backbone's scale) and the temperature ``T`` are
chosen jointly by the validation NLL of that predictive (train + validation only).
``predictive=probit`` (``softmax(mu / T / sqrt(1 + pi/8 var / T^2))``) is the fast
approximation, kept as an option: docs/kalman.md gives its measured disagreement with MC.
Unseen classes (base-to-new) keep their prior (zero-shot) weights.
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Sequence
from typing import Any, ClassVar

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from scipy.stats import chi2

from pyro_clip.errors import ConfigError, DataError
from pyro_clip.features.cache import FeatureSet
from pyro_clip.inference.acquisition import acquisition_scores
from pyro_clip.inference.covariance import (
    AUTO_STATE_GIB,
    COVARIANCES,
    DTYPE,
    build_covariance,
    choose_structure,
    estimate_bytes,
    structure,
)
from pyro_clip.inference.covariance.kron import MEAN_STEPS
from pyro_clip.inference.kalman import KalmanState, probit_probs
from pyro_clip.inference.kalman_adapters import (
    FilteredHead,
    LinearHead,
    ResidualAdapter,
    principal_axes,
)
from pyro_clip.inference.posteriors import RowLinearMap
from pyro_clip.inference.predictive import (
    MCPredictive,
    RowSampler,
    choose_probit_temperature,
    choose_temperature,
    chunks,
    mc_predictive,
    rearrange_exchangeable,
    row_chunk,
)
from pyro_clip.inference.sequential import batch_order, sequential_update
from pyro_clip.methods.base import Method, Prediction, _on_device, register_method
from pyro_clip.methods.options import Option, temperature_candidates, temperature_options
from pyro_clip.training.selection import stratified_folds
from pyro_clip.utils.progress import track

#: prior variance (x logit_scale^2) used when there is no validation data to choose it: the
#: value validation NLL picks most often on the embedded data (docs/kalman.md)
NO_VALIDATION_PRIOR_VAR = 0.044
_CHUNK = 128  # examples per chunk when computing predictive moments


@register_method
class KalmanAdapter(Method):
    """Kalman-filtered adapter over frozen image features (see module docstring)."""

    name = "kalman"
    demo_options: ClassVar[dict[str, Any] | None] = {}  # the demo runs the defaults

    OPTIONS: ClassVar[dict[str, Option]] = {
        "adapter": Option("linear", "linear head on the features, or a residual low-rank "
                          "adapter", choices=("linear", "residual")),
        "covariance": Option("auto", "structure of the weights' Gaussian covariance (auto: "
                             "full where its state fits, then block, then kron)",
                             choices=("auto", *COVARIANCES)),
        "rank": Option(10, "rank R of covariance=lowrank", int, low=1),
        "top_classes": Option(0, "lowrank: keep each example's K likeliest classes' rows "
                              "(0 keeps all)", int, low=0),
        "observation": Option("categorical", "labels through the EKF (categorical) or the "
                              "paper's matched cosine", choices=("categorical", "cosine")),
        "prior_var": Option("auto", "prior variance of the weights, absolute (auto: chosen on "
                            "validation NLL from prior_var_grid)", float, ("auto",), low=0,
                            low_open=True),
        "prior_scale": Option("auto", "logit scale s of the zero-shot prior mean s*cos(x, t_c) "
                              "(auto: the backbone's scale divided by the prior_cooling_grid "
                              "factor with the smallest zero-shot validation NLL)", float,
                              ("auto",), low=0, low_open=True),
        "prior_cooling_grid": Option([1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0], "candidates for "
                                     "prior_scale=auto (>= 1: an over-confident zero-shot "
                                     "prior is cooled, never sharpened)", list, low=1,
                                     item=float),
        "prior_var_grid": Option([0.013, 0.044, 0.13, 0.44], "candidates for prior_var=auto, "
                                 "in units of prior_scale^2 (scale-aware)", list,
                                 low=0, low_open=True, item=float),
        **temperature_options(),
        "selection": Option("val", "how prior_var=auto and temperature=auto are chosen: "
                            "validation NLL (val), or k-fold cross-validation NLL over train + "
                            "validation (cv: cv_folds fits per prior variance)",
                            choices=("val", "cv")),
        "cv_folds": Option(5, "selection=cv: stratified folds", int, low=2),
        "batch_size": Option("auto", "examples per Kalman update (auto: by structure and "
                             "classes)", int, ("auto",), low=1),
        "epochs": Option(1, "passes over the shots (each a full update)", int, low=1),
        "iterations": Option("auto", "iterated posterior linearisation: at most this many "
                             "filter passes from the prior, each example linearised at the "
                             "previous pass's mean (Gauss-Newton on the MAP; 1 = one EKF "
                             "pass); stops once no training logit moves by iteration_tol "
                             "(auto: the structure's default)", int, ("auto",), low=1),
        "iteration_tol": Option(0.01, "iterations: stop when the largest change of a "
                                "training logit between passes is below this", float, low=0),
        "tempered_passes": Option("auto", "passes with the likelihood tempered to "
                                  "p(y|w)^(1/passes) (auto: the structure's default)", int,
                                  ("auto",), low=1),
        "forgetting": Option(1.0, "P <- P / forgetting before each minibatch", float, low=0,
                             high=1, low_open=True),
        "process_noise": Option(0.0, "P <- P + q I before each minibatch", float, low=0),
        "obs_noise": Option(0.05, "cosine observation: initial noise variance R", float,
                            low=0, low_open=True),
        "adaptive_noise": Option(True, "cosine observation: adapt R to the innovations", bool),
        "noise_memory": Option(0.9, "cosine observation: memory a of the adaptive R", float,
                               low=0, high=1, high_open=True),
        "gate": Option(0.999, "chi^2 probability of the Mahalanobis gate (0 = off)", float,
                       low=0, high=1, high_open=True),
        "predictive": Option("mc", "predictive: Monte Carlo over weights (the posterior "
                             "predictive) or the linearised probit approximation",
                             choices=("mc", "probit")),
        "mc_samples": Option(1000, "weight draws: probabilities, PPC replicates, LOO, OOD "
                             "scores", int, low=1),
        "chains": Option(4, "ArviZ: the mc_samples independent draws split into this many "
                         "chains", int, low=1),
        "bias": Option(True, "learn a per-class bias", bool),
        "center_inputs": Option("auto", "linear head on x - mean(train x) (auto: per "
                                "structure)", choices=("auto", True, False)),
        "rotate_inputs": Option("auto", "linear head on the training features' principal "
                                "axes (auto: by structure)", choices=("auto", True, False)),
        "kron_mean_step": Option("auto", "kron's mean step: kalman gain of the Kronecker "
                                 "prior, or natural (K-FAC)", choices=MEAN_STEPS),
        "max_state_gib": Option(8.0, "refuse a covariance state larger than this (GiB), "
                                "before allocating", float, low=0, low_open=True),
        "residual_rank": Option(4, "adapter=residual: rank of the adapter", int, low=1),
        "residual_ratio": Option(1.0, "adapter=residual: weight of the adapter's output",
                                 float),
    }

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._validate()
        self.state: KalmanState | None = None
        self.adapter: FilteredHead | None = None
        self.train_classnames: list[str] = []
        self.obs_var = float(self.options["obs_noise"])
        self.dim: int | None = None
        self.prior_var = 1.0
        self.center: torch.Tensor | None = None
        self.rotation: torch.Tensor | None = None
        self._auto_covariance = self.options["covariance"] == "auto"
        #: sequential updates since the first fit (seeds the k-th update's minibatch order)
        self.n_updates = 0
        #: every labelled feature assimilated so far (new classes' evidence, see sequential)
        self.seen_features: torch.Tensor | None = None
        self.temperature = 1.0
        #: logit scale of the head's zero-shot prior mean (option ``prior_scale``)
        self.head_scale: float | None = None
        self._draws: torch.Tensor | None = None  # (S, n) weight draws of the fitted state
        #: filter passes run per prior variance (option ``iterations``), for the record
        self._iterations_run: dict[str, int] = {}

    # ----- options and inputs ------------------------------------------------------------
    def _validate(self) -> None:
        """Constraints between options (each option's type and range: :attr:`OPTIONS`)."""
        o = self.options
        if o["center_inputs"] is True and (o["adapter"] != "linear" or not o["bias"]):
            raise ConfigError("kalman: center_inputs=true needs adapter=linear with bias=true")
        if o["rotate_inputs"] is True and o["adapter"] != "linear":
            raise ConfigError("kalman: rotate_inputs=true needs adapter=linear")
        if o["covariance"] != "auto":
            structure(o["covariance"]).check_options(o)
        if o["tempered_passes"] not in ("auto", 1) and o["observation"] != "categorical":
            raise ConfigError("kalman: tempered_passes > 1 needs observation=categorical")
        if o["iterations"] not in ("auto", 1) and o["observation"] != "categorical":
            raise ConfigError("kalman: iterations > 1 needs observation=categorical (the "
                              "cosine observation is linear-Gaussian in the logits already)")

    def _check(self, x: torch.Tensor, where: str) -> None:
        if x.ndim != 2:
            raise DataError(f"kalman {where}: features must be (N, D), got {tuple(x.shape)}")
        if self.dim is not None and x.shape[1] != self.dim:
            raise DataError(
                f"kalman {where}: features have width {x.shape[1]} but the adapter was fitted "
                f"on width {self.dim}; use features of the same backbone and feature kind"
            )

    @property
    def logit_scale(self) -> float:
        """The head's prior logit scale (``prior_scale``; the backbone's before a fit)."""
        return float(self.ctx.backbone.logit_scale if self.head_scale is None
                     else self.head_scale)

    def _choose_prior_scale(self, val: FeatureSet) -> tuple[float, dict[str, float]]:
        """``prior_scale``: fixed, or ``auto``: ``s / T`` with ``T`` in ``prior_cooling_grid``
        minimising the zero-shot validation NLL ``-mean log softmax(s cos(x, t)/T)_y``
        (temperature scaling of the prior, Guo et al. 2017, eq. 9); no validation: ``s``."""
        o, s = self.options, float(self.ctx.backbone.logit_scale)
        if o["prior_scale"] != "auto":
            return float(o["prior_scale"]), {}
        if len(val) == 0:
            return s, {}
        x = val.features[self.feature_kind]
        self._check(x, "validation")
        zs = self.ctx.zero_shot_logits(x, val.classnames).to(DTYPE).cpu()
        t, nlls = choose_temperature(zs[None], val.labels.cpu(), o["prior_cooling_grid"])
        return s / t, nlls

    def _make_adapter(self, text: torch.Tensor) -> FilteredHead:
        scale = self.logit_scale
        if self.options["adapter"] == "linear":
            return LinearHead(text, scale, bias=self.options["bias"], center=self.center,
                              rotation=self.rotation)
        return ResidualAdapter(
            text.shape[1], scale, self.options["residual_rank"],
            self.options["residual_ratio"], seed=self.ctx.seed,
        )

    # ----- fitting -----------------------------------------------------------------------
    def fit(self, train: FeatureSet, val: FeatureSet) -> None:
        x, y = train.features[self.feature_kind], train.labels
        self.dim = None
        self._check(x, "fit")
        self.dim = int(x.shape[1])
        self.n_updates = 0
        self.seen_features = x.detach().float().clone()
        self.train_classnames = list(train.classnames)
        text = self.ctx.text_classifier(self.train_classnames)
        self.head_scale, scale_nlls = self._choose_prior_scale(val)
        self.center = self.rotation = None
        if self._auto_covariance:
            self._choose_covariance(self._make_adapter(text))
        self.center = (F.normalize(x.to(DTYPE), dim=-1).mean(0)
                       if self._centred() else None)
        self.rotation = principal_axes(x, self.center) if self._rotated() else None
        self.adapter = self._make_adapter(text)
        grid = self._prior_var_grid()
        temps = temperature_candidates(self.options)
        search = len(grid) > 1 or len(temps) > 1
        cv_record: dict[str, Any] = {}
        if search and self.options["selection"] == "cv":  # choose here, then one fit below
            (pv, t), cv_record = self._cv_choice(train, val, text, grid, temps)
            grid, temps, search = [pv], [t], False
        elif search and len(val) == 0:  # nothing to choose on: fixed choices, said once
            if len(grid) > 1:
                grid = [NO_VALIDATION_PRIOR_VAR * self.logit_scale**2]
            temps, search = temps[:1] if len(temps) == 1 else [1.0], False
            warnings.warn(
                f"kalman: no validation data, so prior_var={grid[0]:.3g} and temperature="
                f"{temps[0]:g} are used unchosen (defaults: {NO_VALIDATION_PRIOR_VAR} x the "
                "prior's logit scale^2, and 1); pass validation features (pc.fit(..., val=...)) "
                "or a data set with a 'val' split to choose them, or fix prior_var= and "
                "temperature=", UserWarning, stacklevel=2)
        nlls: dict[str, dict[str, float]] = {}
        self._iterations_run = {}
        best: tuple | None = None  # only the best state is kept alive (full can be GiBs)
        for pv in grid:
            self.prior_var = pv
            self.state, self.obs_var, gated = self._filter(x, y, text, pv)
            self._draws = None
            t, by_t = self._val_temperature(val, temps) if search else (temps[0], {})
            nlls[str(pv)] = by_t
            nll = by_t.get(str(t), math.nan)
            if best is None or nll < best[0]:
                best = (nll, pv, t, self.state, self.obs_var, gated, self._draws)
            self.state = self._draws = None
        assert best is not None
        _, pv, self.temperature, self.state, self.obs_var, gated, self._draws = best
        del best
        self.prior_var = pv
        self.selected = {
            "prior_var": pv,
            "prior_scale": self.head_scale,
            "zero_shot_val_nll_by_cooling": scale_nlls,
            "temperature": self.temperature,
            "val_nll_by_prior_var_and_temperature": nlls,
            "batch_size": self._batch_size(),
            "tempered_passes": self._passes(),
            "iterations_run": dict(self._iterations_run),
            "selection": self.options["selection"],
            **cv_record,
            "final_obs_noise": self.obs_var,
            "gated_examples": gated,
            "n_params": self.adapter.n_params,
        }

    def _cv_choice(
        self, train: FeatureSet, val: FeatureSet, text: torch.Tensor, grid: list[float],
        temps: list[float],
    ) -> tuple[tuple[float, float], dict[str, Any]]:
        """``selection=cv``: the ``(prior_var, T)`` minimising the pooled held-out NLL
        ``-1/N sum_i log p(y_i | x_i, D_{-fold(i)})`` of stratified k-fold cross-validation
        over train + validation (each fold's predictive from its own fit, every temperature
        scored on the same draws); the final fit then uses the training split only."""
        kind = self.feature_kind
        x = torch.cat([train.features[kind], val.features[kind]]) if len(val) else \
            train.features[kind]
        y = torch.cat([train.labels, val.labels.to(train.labels)]) if len(val) else train.labels
        folds = stratified_folds(y, int(self.options["cv_folds"]), self.ctx.seed)
        names, c = self.train_classnames, len(self.train_classnames)
        totals = {(pv, t): 0.0 for pv in grid for t in temps}
        for pv in grid:
            self.prior_var = pv
            for held in folds:
                keep = torch.ones(len(y), dtype=torch.bool)
                keep[held] = False
                self.state, _, _ = self._filter(x[keep], y[keep], text, pv)
                self._draws = None
                # the fold's mean held-out NLL of every temperature, on one set of draws
                _, nlls = choose_temperature(self._row_sampler(x[held], names, 1.0), y[held],
                                             temps, chunk=self._chunk(c))
                for t in temps:
                    totals[(pv, t)] += nlls[str(float(t))] * len(held)
        self.state = self._draws = None
        table = {f"{pv:g}": {f"{t:g}": v / len(y) for (p, t), v in totals.items() if p == pv}
                 for pv in grid}
        best = min(totals, key=lambda k: (totals[k], abs(math.log(k[1]))))
        return best, {"cv_nll_by_prior_var_and_temperature": table,
                      "cv_examples": len(y)}

    # ----- the structure's policy for the auto options ---------------------------------
    def _choose_covariance(self, adapter: FilteredHead) -> None:
        """``covariance=auto``: the registry's choice for this head's size
        (:func:`~pyro_clip.inference.covariance.choose_structure`), written into the options
        (``resolved_options`` in config.json) and announced in one line."""
        o = self.options
        kind = choose_structure(adapter.n_params, adapter.n_blocks, {**o, "covariance": "auto"})
        o["covariance"] = kind
        need = estimate_bytes(kind, adapter.n_params, adapter.n_blocks, o["rank"])
        print(f"kalman: covariance=auto -> {kind} ({adapter.n_params} weights in "
              f"{adapter.n_blocks} blocks, state {need / 2**20:.1f} MiB; full is chosen up to "
              f"{AUTO_STATE_GIB:g} GiB)", file=sys.stderr, flush=True)

    def _batch_size(self) -> int:
        """``auto``: the structure's :meth:`~Covariance.auto_batch_size` for C classes."""
        b = self.options["batch_size"]
        if b != "auto":
            return int(b)
        return structure(self.options["covariance"]).auto_batch_size(len(self.train_classnames))

    def _centred(self) -> bool:
        """``auto``: the structure's ``center_inputs``, for a linear head with a bias (the
        bias prior absorbs the shift)."""
        c, o = self.options["center_inputs"], self.options
        if c == "auto":
            return (o["adapter"] == "linear" and o["bias"]
                    and structure(o["covariance"]).center_inputs)
        return bool(c)

    def _categorical_passes(self, name: str) -> int:
        """Option ``name`` (``tempered_passes`` or ``iterations``); ``auto``: the structure's
        class attribute of that name; cosine observations always 1."""
        value, o = self.options[name], self.options
        if value == "auto":
            return (getattr(structure(o["covariance"]), name)
                    if o["observation"] == "categorical" else 1)
        return int(value)

    def _passes(self) -> int:
        """Tempered passes (option ``tempered_passes``)."""
        return self._categorical_passes("tempered_passes")

    def _iterations(self) -> int:
        """Posterior linearisation passes (option ``iterations``)."""
        return self._categorical_passes("iterations")

    def _rotated(self) -> bool:
        """``auto``: the structure's ``rotate_inputs``, for a linear head."""
        r, o = self.options["rotate_inputs"], self.options
        if r == "auto":
            return o["adapter"] == "linear" and structure(o["covariance"]).rotate_inputs
        return bool(r)

    def _make_cov(self, prior_var: float):
        o, adapter = self.options, self.adapter
        assert adapter is not None
        return build_covariance(o["covariance"], adapter.n_params, prior_var,
                                n_blocks=adapter.n_blocks, options=o,
                                max_gib=float(o["max_state_gib"]))

    def _filter(
        self, x: torch.Tensor, y: torch.Tensor, text: torch.Tensor, prior_var: float
    ) -> tuple[KalmanState, float, int]:
        adapter = self.adapter
        assert adapter is not None
        iterations = self._iterations()
        state = KalmanState(adapter.prior_mean(), self._make_cov(prior_var))
        obs_var, gated = self._assimilate(state, x, y, text, float(self.options["obs_noise"]),
                                          self.ctx.seed, f"pv={prior_var:g}",
                                          repair=iterations == 1)
        self._iterations_run[str(prior_var)] = 1
        logits = adapter.logits(state.mean, x, text) if iterations > 1 else None
        for k in range(1, iterations):
            # iterated posterior linearisation (Bell 1994): refilter from the prior, every
            # example's likelihood expanded at the previous pass's mean, so each pass is one
            # Gauss-Newton step on the log posterior; its fixed point is the MAP
            anchor, last = state.mean, k == iterations - 1
            del state  # only its mean is needed: one covariance alive at a time
            state = KalmanState(adapter.prior_mean(), self._make_cov(prior_var))
            self._assimilate(state, x, y, text, obs_var, self.ctx.seed,
                             f"pv={prior_var:g} it={k + 1}", anchor=anchor, repair=False)
            self._iterations_run[str(prior_var)] = k + 1
            before, logits = logits, adapter.logits(state.mean, x, text)
            moved = float((logits - before).abs().max())
            if last or moved < float(self.options["iteration_tol"]):
                state.cov.repair()
                break
        return state, obs_var, gated

    def _assimilate(
        self, state: KalmanState, x: torch.Tensor, y: torch.Tensor, text: torch.Tensor,
        obs_var: float, seed: int, tag: str, anchor: torch.Tensor | None = None,
        repair: bool = True,
    ) -> tuple[float, int]:
        """Filter ``(x, y)`` into ``state`` in place, minibatches in
        :func:`~pyro_clip.inference.sequential.batch_order` (seeded ``seed``); returns the
        final observation noise and the number of gated examples. ``anchor``: linearise every
        categorical observation at these parameters instead of the running mean
        (:meth:`KalmanState.update_categorical`'s ``shift``); ``repair=False`` skips the
        final positive-definiteness check (a pass whose covariance is thrown away)."""
        o, adapter = self.options, self.adapter
        assert adapter is not None
        gated = 0
        threshold = float(chi2.ppf(o["gate"], df=1)) if o["gate"] > 0 else math.inf
        passes = self._passes()
        batches = batch_order(len(y), self._batch_size(), o["epochs"] * passes, seed)
        bar = track(batches, desc=f"kalman {o['covariance']} {tag}",
                    unit="batch", enabled=self.ctx.progress)
        for idx in bar:
            if o["forgetting"] < 1 or o["process_noise"] > 0:
                state.predict(o["forgetting"], o["process_noise"])
            xb, yb = x[idx], y[idx]
            at = state.mean if anchor is None else anchor
            logits = adapter.logits(at, xb, text)
            jac = adapter.jacobian(at, xb, text)
            if o["observation"] == "categorical":
                shift = (None if anchor is None else
                         jac.mm((state.mean - anchor)[:, None]).reshape(logits.shape))
                state.update_categorical(jac, logits, yb, weight=1.0 / passes, shift=shift)
                continue
            obs_var, n_gated = self._cosine_step(state, jac, logits, xb, yb, text, obs_var,
                                                 threshold)
            gated += n_gated
        if repair:
            state.cov.repair()
        return obs_var, gated

    def _cosine_step(self, state, jac, logits, xb, yb, text, obs_var, threshold):
        """Gaussian observation ``cos(x_b, w_yb) = 1`` (matched logit / s); gated; adaptive R."""
        scale = self.logit_scale
        select = F.one_hot(yb, logits.shape[1]).to(DTYPE).unsqueeze(1) / scale  # (B, 1, C)
        h = jac.mix(select)
        resid = 1.0 - logits.gather(1, yb[:, None])[:, 0] / scale
        d2 = resid**2 / (state.cov.var(h) + obs_var)
        keep = d2 <= threshold
        noise = torch.where(keep, torch.full_like(resid, obs_var), torch.inf)
        state.update_gaussian(h, noise, resid)
        if self.options["adaptive_noise"] and bool(keep.any()):
            post = self.adapter.logits(state.mean, xb, text)
            eps = 1.0 - post.gather(1, yb[:, None])[:, 0] / scale
            h_post = self.adapter.jacobian(state.mean, xb, text).mix(select)
            sample = (eps**2 + state.cov.var(h_post))[keep].mean()
            a = self.options["noise_memory"]
            obs_var = max(float(a * obs_var + (1 - a) * sample), 1e-8)
        return obs_var, int((~keep).sum())

    def _prior_var_grid(self) -> list[float]:
        """Absolute prior variances: ``prior_var`` as given, or the grid times ``s^2`` (``s``
        the prior's logit scale, :attr:`logit_scale`)."""
        o = self.options
        if o["prior_var"] != "auto":
            return [float(o["prior_var"])]
        s2 = self.logit_scale ** 2
        return [float(v) * s2 for v in o["prior_var_grid"]]

    def _val_temperature(self, val: FeatureSet, temps: list[float]) -> tuple[float, dict]:
        """The temperature with the smallest validation NLL of the configured predictive for
        the current state, and the NLL of every candidate."""
        x = val.features[self.feature_kind]
        self._check(x, "validation")
        if self.options["predictive"] == "mc":
            return choose_temperature(self._row_sampler(x, val.classnames, 1.0), val.labels,
                                      temps, chunk=self._chunk(len(val.classnames)))
        mean, var = self._logit_moments(x, val.classnames)
        return choose_probit_temperature(mean, var, val.labels, temps)

    # ----- prediction --------------------------------------------------------------------
    def _fitted(self) -> tuple[KalmanState, FilteredHead]:
        if self.state is None or self.adapter is None:
            raise RuntimeError("kalman: call fit() or load_state_dict() before predict()")
        return self.state, self.adapter

    def _class_map(self, classnames: Sequence[str]) -> torch.Tensor:
        index = {c: i for i, c in enumerate(self.train_classnames)}
        return torch.tensor([index.get(c, -1) for c in classnames], dtype=torch.long)

    def _logit_moments(
        self, x: torch.Tensor, classnames: Sequence[str]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of the logits under the (linearised) weight posterior, (N, C)."""
        state, adapter = self._fitted()
        text = self.ctx.text_classifier(list(classnames))
        if isinstance(adapter, ResidualAdapter):
            means, variances = [], []
            for xb in x.split(_CHUNK):
                means.append(adapter.logits(state.mean, xb, text))
                jac = adapter.jacobian(state.mean, xb, text)
                variances.append(state.cov.var(jac).reshape(len(xb), -1))
            return torch.cat(means), torch.cat(variances)
        assert isinstance(adapter, LinearHead)
        seen = self._class_map(classnames)
        inputs = adapter.inputs(x)
        w = adapter.class_prior_mean(text)
        trained = state.mean.reshape(adapter.n_classes, adapter.n_in)
        w[seen >= 0] = trained[seen[seen >= 0]]
        mean = inputs @ w.T
        var = self.prior_var * (inputs**2).sum(1, keepdim=True).expand_as(mean).clone()
        if bool((seen >= 0).any()):
            v_seen = torch.cat([
                state.cov.var(adapter.jacobian(state.mean, xb, text)).reshape(len(xb), -1)
                for xb in x.split(_CHUNK)
            ])
            var[:, seen >= 0] = v_seen[:, seen[seen >= 0]]
        return mean, var

    def _weight_draws(self) -> tuple[torch.Tensor, torch.Generator]:
        """The fitted state's ``mc_samples`` weight draws (S, n), drawn once per state (every
        evaluation set sees the same posterior draws), and a generator for the prior rows."""
        state, _ = self._fitted()
        if self._draws is None:
            gen = torch.Generator().manual_seed(self.ctx.seed + 1)
            self._draws = state.mean + state.cov.sample(self.options["mc_samples"], gen)
        return self._draws, torch.Generator().manual_seed(self.ctx.seed + 2)

    def _chunk(self, n_classes: int) -> int:
        """Rows per chunk of the Monte Carlo predictive (:func:`row_chunk`); a linear head's
        chunk may be as large as its draws' weights (S, C, D + 1), which every chunk's product
        reads, so that it reads them once per (D + 1) / 4 rows or more."""
        s, adapter = int(self.options["mc_samples"]), self.adapter
        weights = 8 * s * n_classes * adapter.n_in if isinstance(adapter, LinearHead) else 0
        return row_chunk(s, n_classes, floor=weights)

    def _row_sampler(self, x: torch.Tensor, classnames: Sequence[str],
                     temperature: float) -> RowSampler:
        """Logit draws ``f_s(x_rows) / T`` (S, rows, C) from the posterior weight draws (the
        prior for unseen classes); the draws' weights are built once, the logits per slice."""
        _, adapter = self._fitted()
        thetas, gen = self._weight_draws()
        s = len(thetas)
        text = self.ctx.text_classifier(list(classnames))
        if isinstance(adapter, ResidualAdapter):
            return lambda rows: torch.stack(
                [adapter.logits(t, x[rows], text) for t in thetas]) / temperature
        assert isinstance(adapter, LinearHead)
        seen = self._class_map(classnames)
        prior = adapter.class_prior_mean(text)
        trained = thetas.reshape(s, adapter.n_classes, adapter.n_in)
        if bool((seen >= 0).all()):  # no prior rows: the draws' own weights
            same = len(seen) == adapter.n_classes and bool(
                (seen == torch.arange(len(seen), device=seen.device)).all())
            w = trained if same else trained[:, seen]
        else:  # w ~ N(prior, prior_var I) for the unseen rows, built in place
            w = torch.randn(s, *prior.shape, generator=gen, dtype=DTYPE,
                            device=gen.device).to(prior.device)
            w.mul_(self.prior_var**0.5).add_(prior)
            w[:, seen >= 0] = trained[:, seen[seen >= 0]]
        inputs = adapter.inputs(x)
        return lambda rows: torch.einsum("np,scp->snc", inputs[rows], w) / temperature

    def _mc(self, x: torch.Tensor, classnames: Sequence[str],
            replicates: bool = True) -> MCPredictive:
        """The Monte Carlo predictive of ``x`` reduced chunk by chunk (:func:`mc_predictive`)."""
        s, c = int(self.options["mc_samples"]), len(classnames)
        mc = mc_predictive(self._row_sampler(x, classnames, self.temperature), len(x), s, c,
                           seed=self.ctx.seed + 3, chains=int(self.options["chains"]),
                           replicates=replicates, chunk=self._chunk(c))
        return self._order_unseen(mc, x, classnames)

    def _order_unseen(self, mc: MCPredictive, x: torch.Tensor,
                      classnames: Sequence[str]) -> MCPredictive:
        """Classes never trained on keep i.i.d. prior rows ``N(s t_c, v I)``: their logits are
        exchangeable up to the means, so the exact predictive ranks them as the zero-shot
        logits; the Monte Carlo probabilities are rearranged into that order
        (:func:`~pyro_clip.inference.predictive.rearrange_exchangeable`)."""
        adapter = self.adapter
        unseen = (self._class_map(classnames) < 0).nonzero()[:, 0]
        if not isinstance(adapter, LinearHead) or len(unseen) < 2:
            return mc
        prior = adapter.class_prior_mean(self.ctx.text_classifier(list(classnames)))[unseen]
        probs = mc.probs.clone()
        for rows in chunks(len(x), max(1, 2**24 // len(unseen))):
            keys = adapter.inputs(x[rows]) @ prior.T
            probs[rows] = rearrange_exchangeable(mc.probs[rows], keys, unseen.to(probs.device))
        mc.probs = probs
        return mc

    @torch.no_grad()
    def logit_posterior(self, features: torch.Tensor, classnames: Sequence[str]):
        """Linearised posterior predictive of the logits over the temperature,
        ``f_c(x) / T ~ N(m_c / T, v_c / T^2)`` with ``m = J mu``, ``v = diag(J P J^T)``
        (per-logit marginals; :meth:`posterior` has the
        full weight posterior of every structure). Batch (N,), event (C,)."""
        mean, var = self._logit_moments(features.to(DTYPE), classnames)
        t = self.temperature
        return dist.Normal(mean / t, var.clamp_min(1e-12).sqrt() / t).to_event(1)

    @torch.no_grad()
    def logit_prior(self, features: torch.Tensor, classnames: Sequence[str]):
        """Prior logits before any shot. Linear head: weights ``N(w0, s0 I)`` around the
        zero-shot classifier, so ``f_c(x) ~ N(w0_c . x~, s0 ||x~||^2)`` (x~ = input with bias
        1), divided by the temperature as in :meth:`predict`. The residual adapter's prior is
        not written in closed form here: ``None``."""
        _, adapter = self._fitted()
        if not isinstance(adapter, LinearHead):
            return None
        text = self.ctx.text_classifier(list(classnames))
        inputs = adapter.inputs(features.to(DTYPE))
        mean = inputs @ adapter.class_prior_mean(text).T
        var = self.prior_var * (inputs**2).sum(1, keepdim=True).expand_as(mean)
        t = self.temperature  # the logits the likelihood sees, f / T, as in predict()
        return dist.Normal(mean / t, var.sqrt() / t).to_event(1)

    def predict(self, features: torch.Tensor, classnames: Sequence[str]) -> Prediction:
        self._check(features, "predict")
        mc = self._mc(features, classnames)
        if self.options["predictive"] == "mc":
            probs = mc.probs
        else:
            mean, var = self._logit_moments(features, classnames)
            t = self.temperature
            probs = probit_probs(mean / t, var / t**2)
        return Prediction(probs.float(), mc.logit_samples, mc.mutual_information.float(),
                          mc.replicates)

    def ood_scores(self, features: torch.Tensor, classnames: Sequence[str]) -> dict[str, Any]:
        """The paper's Mahalanobis rule ``min_c (1 - mu_c/s)^2 / (var_c/s^2 + R)`` on the cosine
        innovation (higher = more out-of-distribution). The predictive's entropy and mutual
        information are not repeated here: every run scores them from :meth:`predict`'s
        :class:`Prediction` (the built-in ``entropy`` and ``mutual_information``)."""
        self._check(features, "ood_scores")
        mean, var = self._logit_moments(features, classnames)
        scale = self.logit_scale
        d2 = (1.0 - mean / scale) ** 2 / (var / scale**2 + self.obs_var)
        return {"mahalanobis": d2.min(-1).values.float()}

    def posterior(self, basis: str = "original") -> torch.distributions.Distribution:
        """The filtered posterior over the adapter weights as a Pyro distribution.

        Linear head: event ``(C, D + 1)``, rows ``[w_c, b_c]`` of the training classes for
        ``z = W x + b`` on the normalised features (the layout of
        :func:`~pyro_clip.models.bayesian_linear.bayesian_linear_model`'s site ``w``).
        When the head was fitted on centred or rotated inputs (``center_inputs``,
        ``rotate_inputs``) that is the filtered distribution mapped row-wise by
        :meth:`LinearHead.to_original` (a :class:`RowLinearMap`: same Gaussian, no longer of
        the structure's type, since e.g. ``diag`` is diagonal only in the rotated basis);
        ``basis="fitted"`` gives the structure's own distribution over the fitted
        parametrisation (inputs ``adapter.inputs(x)``). Residual adapter: event ``(n,)``.
        Types follow ``covariance=`` (see :mod:`pyro_clip.inference.posteriors`).
        """
        if basis not in ("original", "fitted"):
            raise ConfigError(f"kalman posterior: basis must be original or fitted, got {basis!r}")
        state, adapter = self._fitted()
        if not isinstance(adapter, LinearHead):
            return state.posterior((adapter.n_params,))
        fitted = state.posterior((adapter.n_classes, adapter.n_in))
        m = adapter.to_original()
        return fitted if basis == "fitted" or m is None else RowLinearMap(
            fitted, m, state.mean.reshape(adapter.n_classes, adapter.n_in))

    # ----- sequential and active learning (pyro_clip.inference.sequential / .acquisition) ---
    @_on_device
    def update(self, train: FeatureSet) -> dict[str, Any]:
        """One more filtering pass over new labelled features, no refit; classes never seen
        are added with their zero-shot prior (:func:`~pyro_clip.inference.sequential.
        sequential_update`: which fit-time choices are kept, the temperature among them).
        Returns the update's record. The cached weight draws of the old posterior are dropped."""
        record = sequential_update(self, train)
        self._draws = None  # the predictive is redrawn from the updated posterior
        return record

    @_on_device
    def acquisition(self, pool_features: torch.Tensor, score: str = "entropy") -> torch.Tensor:
        """One score per unlabelled image (higher = label it first): ``entropy``, ``bald`` or
        ``variance`` (:mod:`pyro_clip.inference.acquisition`), over the model's classes."""
        self._check(pool_features, "acquisition")
        return acquisition_scores(self, pool_features, score)

    # ----- checkpoints -------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state, _ = self._fitted()
        return {
            "mean": state.mean,
            "cov": state.cov.state_dict(),
            "train_classnames": self.train_classnames,
            "prior_var": self.prior_var,
            "prior_scale": self.head_scale,
            "temperature": self.temperature,
            "obs_var": self.obs_var,
            "dim": self.dim,
            "center": self.center,
            "rotation": self.rotation,
            "covariance": self.options["covariance"],
            "n_updates": self.n_updates,
            "seen_features": self.seen_features,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.train_classnames = list(state["train_classnames"])
        self.prior_var, self.obs_var, self.dim = state["prior_var"], state["obs_var"], state["dim"]
        self.temperature = float(state.get("temperature", 1.0))
        # checkpoints written before prior_scale existed used the backbone's scale
        self.head_scale = state.get("prior_scale")
        self._draws = None
        self.center = state.get("center")
        self.rotation = state.get("rotation")
        # checkpoints written before covariance=auto existed were fitted with the old default
        kind = state.get("covariance") or ("full" if self._auto_covariance
                                           else self.options["covariance"])
        self.options["covariance"] = kind
        self.n_updates = int(state.get("n_updates", 0))
        self.seen_features = state.get("seen_features")
        self.adapter = self._make_adapter(self.ctx.text_classifier(self.train_classnames))
        cov = self._make_cov(self.prior_var)
        cov.load_state_dict(state["cov"])
        self.state = KalmanState(state["mean"], cov)
