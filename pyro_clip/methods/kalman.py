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
from collections.abc import Sequence
from typing import Any, ClassVar

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from scipy.stats import chi2

from pyro_clip.errors import ConfigError, DataError
from pyro_clip.features.cache import FeatureSet
from pyro_clip.inference.covariance import COVARIANCES, DTYPE, make_covariance
from pyro_clip.inference.covariance.kron import MEAN_STEPS
from pyro_clip.inference.kalman import KalmanState, probit_probs
from pyro_clip.inference.kalman_adapters import (
    Adapter,
    LinearHead,
    ResidualAdapter,
    principal_axes,
)
from pyro_clip.inference.posteriors import RowLinearMap
from pyro_clip.inference.predictive import TEMPERATURE_GRID, choose_temperature, mc_probs
from pyro_clip.methods.base import Method, Prediction, register_method
from pyro_clip.utils.progress import track

_CHUNK = 128  # examples per chunk when computing predictive moments


#: from this many classes ``block`` minibatches 32 examples (one pass over its C P^2 state)
BLOCK_MINIBATCH_CLASSES = 256


def auto_batch_size(covariance: str, n_classes: int) -> int:
    """Examples per minibatch for ``batch_size=auto`` (see ``KalmanAdapter._batch_size``)."""
    if covariance == "kron":
        return max(16, n_classes)
    if covariance == "diag":
        return 1
    if covariance == "block":  # memory-bound state from 256 classes: minibatch (docs/kalman.md)
        return 1 if n_classes < BLOCK_MINIBATCH_CLASSES else 32
    return max(1, min(16, 160 // max(n_classes, 1)))


@register_method
class KalmanAdapter(Method):
    """Kalman-filtered adapter over frozen image features (see module docstring)."""

    name = "kalman"
    demo_options: ClassVar[dict[str, Any] | None] = {}  # the demo runs the defaults

    @classmethod
    def default_options(cls) -> dict[str, Any]:
        return {
            "adapter": "linear",  # linear | residual
            "covariance": "full",  # full | block | diag | lowrank | kron
            "rank": 10,  # low-rank covariance rank R
            "top_classes": 0,  # lowrank: keep each example's K likeliest classes' rows (0 = all)
            "observation": "categorical",  # categorical | cosine
            # float (absolute), or "auto" = chosen on validation NLL from the grid, whose
            # values are in units of logit_scale^2 (scale-aware: 0.044 is 10 at scale 15)
            "prior_var": "auto",
            "prior_var_grid": [0.013, 0.044, 0.13, 0.44],
            # likelihood temperature of the predictive: float, or auto = chosen on validation
            "temperature": "auto",
            "temperature_grid": list(TEMPERATURE_GRID),
            "batch_size": "auto",  # int, or auto (see auto_batch_size)
            "epochs": 1,
            # passes over the data, each with the likelihood tempered to p(y|w)^(1/passes)
            # (each example counted once in total); auto: 2 for diag, 1 otherwise
            "tempered_passes": "auto",
            "forgetting": 1.0,  # P <- P / forgetting before each minibatch
            "process_noise": 0.0,  # P <- P + q I before each minibatch
            "obs_noise": 0.05,  # cosine observation: initial R
            "adaptive_noise": True,
            "noise_memory": 0.9,
            "gate": 0.999,  # chi^2 probability of the Mahalanobis gate (0 = off)
            "predictive": "mc",  # mc (the posterior predictive) | probit (fast approximation)
            "mc_samples": 1000,  # weight draws: probabilities, PPC replicates, LOO, OOD scores
            "chains": 4,  # ArviZ: the mc_samples independent draws split into this many chains
            "bias": True,
            # linear head on x - mean(train x) (bias prior absorbs it); auto: block and diag
            "center_inputs": "auto",
            # linear head on U^T (x - mu), U = principal axes of the training features
            "rotate_inputs": "auto",
            # kron's mean step: kalman (gain of the Kronecker prior) | natural (K-FAC) | auto
            "kron_mean_step": "auto",
            "max_state_gib": 8.0,  # refuse a covariance state larger than this, before allocating
            "residual_rank": 4,
            "residual_ratio": 1.0,
        }

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._validate()
        self.state: KalmanState | None = None
        self.adapter: Adapter | None = None
        self.train_classnames: list[str] = []
        self.obs_var = float(self.options["obs_noise"])
        self.dim: int | None = None
        self.prior_var = 1.0
        self.center: torch.Tensor | None = None
        self.rotation: torch.Tensor | None = None
        self.temperature = 1.0
        self._draws: torch.Tensor | None = None  # (S, n) weight draws of the fitted state

    # ----- options and inputs ------------------------------------------------------------
    def _validate(self) -> None:
        o = self.options
        choices = {
            "adapter": ("linear", "residual"),
            "covariance": COVARIANCES,
            "observation": ("categorical", "cosine"),
            "predictive": ("probit", "mc"),
        }
        for key, allowed in choices.items():
            if o[key] not in allowed:
                raise ConfigError(
                    f"kalman: {key}={o[key]!r} is not valid; use --opt {key}=" + "|".join(allowed)
                )
        if o["batch_size"] != "auto" and (not isinstance(o["batch_size"], int)
                                          or o["batch_size"] < 1):
            raise ConfigError(
                f"kalman: batch_size must be 'auto' or a positive integer, got {o['batch_size']!r}"
            )
        if not isinstance(o["max_state_gib"], int | float) or o["max_state_gib"] <= 0:
            raise ConfigError(
                f"kalman: max_state_gib must be a positive number, got {o['max_state_gib']!r}"
            )
        if o["center_inputs"] not in ("auto", True, False):
            raise ConfigError(
                f"kalman: center_inputs must be auto, true or false, got {o['center_inputs']!r}")
        if o["center_inputs"] is True and (o["adapter"] != "linear" or not o["bias"]):
            raise ConfigError("kalman: center_inputs=true needs adapter=linear with bias=true")
        if o["kron_mean_step"] not in MEAN_STEPS:
            raise ConfigError(f"kalman: kron_mean_step={o['kron_mean_step']!r} is not valid; "
                              "use --opt kron_mean_step=" + "|".join(MEAN_STEPS))
        if o["rotate_inputs"] not in ("auto", True, False):
            raise ConfigError(
                f"kalman: rotate_inputs must be auto, true or false, got {o['rotate_inputs']!r}")
        if o["rotate_inputs"] is True and o["adapter"] != "linear":
            raise ConfigError("kalman: rotate_inputs=true needs adapter=linear")
        if o["covariance"] == "kron" and o["adapter"] != "linear":
            raise ConfigError(
                "kalman: covariance=kron factors the linear head's weights (classes x inputs); "
                "use adapter=linear, or covariance=block|diag|lowrank with adapter=residual"
            )
        tp = o["tempered_passes"]
        if tp != "auto" and (not isinstance(tp, int) or isinstance(tp, bool) or tp < 1):
            raise ConfigError(
                f"kalman: tempered_passes must be 'auto' or a positive integer, got {tp!r}")
        if tp not in ("auto", 1) and o["observation"] != "categorical":
            raise ConfigError("kalman: tempered_passes > 1 needs observation=categorical")
        for key in ("rank", "epochs", "mc_samples", "residual_rank", "chains"):
            if not isinstance(o[key], int) or o[key] < 1:
                raise ConfigError(f"kalman: {key} must be a positive integer, got {o[key]!r}")
        if not isinstance(o["top_classes"], int) or o["top_classes"] < 0:
            raise ConfigError(f"kalman: top_classes must be an integer >= 0 (0 keeps every "
                              f"class), got {o['top_classes']!r}")
        grid = [o["prior_var"]] if o["prior_var"] != "auto" else list(o["prior_var_grid"])
        if not grid or any(not isinstance(v, int | float) or v <= 0 for v in grid):
            raise ConfigError(
                f"kalman: prior_var must be 'auto' or a positive number and prior_var_grid a "
                f"non-empty list of positive numbers; got {o['prior_var']!r}, "
                f"{o['prior_var_grid']!r}"
            )
        temps = ([o["temperature"]] if o["temperature"] != "auto"
                 else list(o["temperature_grid"]))
        if not temps or any(not isinstance(t, int | float) or isinstance(t, bool) or t <= 0
                            for t in temps):
            raise ConfigError(
                f"kalman: temperature must be 'auto' or a positive number and temperature_grid "
                f"a non-empty list of positive numbers; got {o['temperature']!r}, "
                f"{o['temperature_grid']!r}")
        if not 0 < o["forgetting"] <= 1 or o["process_noise"] < 0 or o["obs_noise"] <= 0:
            raise ConfigError(
                "kalman: need 0 < forgetting <= 1, process_noise >= 0 and obs_noise > 0"
            )
        if not 0 <= o["gate"] < 1 or not 0 <= o["noise_memory"] < 1:
            raise ConfigError("kalman: gate and noise_memory must be in [0, 1)")

    def _check(self, x: torch.Tensor, where: str) -> None:
        if x.ndim != 2:
            raise DataError(f"kalman {where}: features must be (N, D), got {tuple(x.shape)}")
        if self.dim is not None and x.shape[1] != self.dim:
            raise DataError(
                f"kalman {where}: features have width {x.shape[1]} but the adapter was fitted "
                f"on width {self.dim}; use features of the same backbone and feature kind"
            )
        if not bool(torch.isfinite(x).all()):
            raise DataError(
                f"kalman {where}: features contain NaN or inf; re-extract them "
                "(delete the feature cache entry) or drop those images"
            )

    def _make_adapter(self, text: torch.Tensor) -> Adapter:
        scale = self.ctx.backbone.logit_scale
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
        self.train_classnames = list(train.classnames)
        text = self.ctx.text_classifier(self.train_classnames)
        self.center = (F.normalize(x.to(DTYPE), dim=-1).mean(0)
                       if self._centred() else None)
        self.rotation = principal_axes(x, self.center) if self._rotated() else None
        self.adapter = self._make_adapter(text)
        grid = self._prior_var_grid()
        temps = self._temperature_grid()
        search = len(grid) > 1 or len(temps) > 1
        if search and len(val) == 0:
            raise DataError("kalman: the validation split is empty, so prior_var and temperature "
                            "cannot be chosen; use a data set with a 'val' split or fix both "
                            "(--opt prior_var=10 --opt temperature=1)")
        nlls: dict[str, dict[str, float]] = {}
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
            "temperature": self.temperature,
            "val_nll_by_prior_var_and_temperature": nlls,
            "batch_size": self._batch_size(),
            "tempered_passes": self._passes(),
            "final_obs_noise": self.obs_var,
            "gated_examples": gated,
            "n_params": self.adapter.n_params,
        }

    def _batch_size(self) -> int:
        """``auto``: the generic categorical innovation is (B C) x (B C) (issue 16: batch 16
        at 100 classes was 13-23x slower per example than batch 1), so ``full`` and
        ``lowrank`` take clamp(160 // C, 1, 16) examples (16 at 10 classes, 1 from 100);
        ``diag`` takes 1, its O(C P) Sherman-Morrison path; ``block`` takes 1 (O(C P^2)) below
        256 classes and 32 from 256 (its O(C B P^2 + C B^3) minibatch path reads and writes
        the memory-bound state once per minibatch);
        ``kron`` forms no innovation and pays two eigendecompositions per minibatch, so it
        takes max(16, C)."""
        b = self.options["batch_size"]
        if b != "auto":
            return int(b)
        return auto_batch_size(self.options["covariance"], len(self.train_classnames))

    def _centred(self) -> bool:
        """``auto``: centre for ``block`` and ``diag``. Normalised CLIP-like features share a
        large common component; a structure without cross-input (diag) or cross-class
        (block) covariance then over-steps along it (4 shots, seed 1: diag 40.4 -> 50.6,
        block 49.0 -> 52.5 with centring; see docs/kalman.md)."""
        c = self.options["center_inputs"]
        if c == "auto":
            o = self.options
            return o["adapter"] == "linear" and o["bias"] and o["covariance"] in ("block", "diag")
        return bool(c)

    def _passes(self) -> int:
        """``auto``: 2 tempered passes for ``diag`` (its diagonal projection after each
        update loses the correlations a second, relinearised pass recovers: 4 shots 53.2 ->
        55.7, docs/kalman.md), 1 otherwise; cosine observations always 1."""
        tp = self.options["tempered_passes"]
        if tp == "auto":
            o = self.options
            return 2 if o["covariance"] == "diag" and o["observation"] == "categorical" else 1
        return int(tp)

    def _rotated(self) -> bool:
        """``auto``: rotate for ``diag`` and ``lowrank`` (see docs/kalman.md)."""
        r = self.options["rotate_inputs"]
        if r == "auto":
            return self.options["adapter"] == "linear" and self.options["covariance"] in (
                "diag", "lowrank")
        return bool(r)

    def _make_cov(self, prior_var: float):
        o, adapter = self.options, self.adapter
        assert adapter is not None
        return make_covariance(o["covariance"], adapter.n_params, prior_var,
                               n_blocks=adapter.n_blocks, rank=o["rank"],
                               max_gib=float(o["max_state_gib"]),
                               top_classes=int(o["top_classes"]),
                               kron_mean_step=o["kron_mean_step"])

    def _filter(
        self, x: torch.Tensor, y: torch.Tensor, text: torch.Tensor, prior_var: float
    ) -> tuple[KalmanState, float, int]:
        o, adapter = self.options, self.adapter
        assert adapter is not None
        cov = self._make_cov(prior_var)
        state = KalmanState(adapter.prior_mean(), cov)
        gen = torch.Generator().manual_seed(self.ctx.seed)
        obs_var, gated = float(o["obs_noise"]), 0
        threshold = float(chi2.ppf(o["gate"], df=1)) if o["gate"] > 0 else math.inf
        passes = self._passes()
        batches = [  # CPU generator: the same order on every device
            idx for _ in range(o["epochs"] * passes)
            for idx in torch.randperm(len(y), generator=gen, device=gen.device)
            .split(self._batch_size())
        ]
        bar = track(batches, desc=f"kalman {o['covariance']} pv={prior_var:g}",
                    unit="batch", enabled=self.ctx.progress)
        for idx in bar:
            if o["forgetting"] < 1 or o["process_noise"] > 0:
                state.predict(o["forgetting"], o["process_noise"])
            xb, yb = x[idx], y[idx]
            logits = adapter.logits(state.mean, xb, text)
            jac = adapter.jacobian(state.mean, xb, text)
            if o["observation"] == "categorical":
                state.update_categorical(jac, logits, yb, weight=1.0 / passes)
                continue
            obs_var, n_gated = self._cosine_step(state, jac, logits, xb, yb, text, obs_var,
                                                 threshold)
            gated += n_gated
        state.cov.repair()
        return state, obs_var, gated

    def _cosine_step(self, state, jac, logits, xb, yb, text, obs_var, threshold):
        """Gaussian observation ``cos(x_b, w_yb) = 1`` (matched logit / s); gated; adaptive R."""
        scale = self.ctx.backbone.logit_scale
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
        """Absolute prior variances: ``prior_var`` as given, or the grid times ``s^2``."""
        o = self.options
        if o["prior_var"] != "auto":
            return [float(o["prior_var"])]
        s2 = float(self.ctx.backbone.logit_scale) ** 2
        return [float(v) * s2 for v in o["prior_var_grid"]]

    def _temperature_grid(self) -> list[float]:
        o = self.options
        return ([float(o["temperature"])] if o["temperature"] != "auto"
                else [float(t) for t in o["temperature_grid"]])

    def _val_temperature(self, val: FeatureSet, temps: list[float]) -> tuple[float, dict]:
        """The temperature with the smallest validation NLL of the configured predictive for
        the current state, and the NLL of every candidate."""
        x = val.features[self.feature_kind]
        self._check(x, "validation")
        if self.options["predictive"] == "mc":
            return choose_temperature(self._raw_logit_samples(x, val.classnames), val.labels,
                                      temps)
        mean, var = self._logit_moments(x, val.classnames)
        idx = torch.arange(len(val))
        nlls = {str(t): float(-probit_probs(mean / t, var / t**2)[idx, val.labels]
                              .clamp_min(1e-12).log().mean()) for t in temps}
        return float(min(nlls, key=nlls.__getitem__)), nlls

    # ----- prediction --------------------------------------------------------------------
    def _fitted(self) -> tuple[KalmanState, Adapter]:
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

    def _logit_samples(self, x: torch.Tensor, classnames: Sequence[str]) -> torch.Tensor:
        """Posterior predictive logit draws ``f_s(x) / T`` (S, N, C) (module docstring)."""
        return self._raw_logit_samples(x, classnames) / self.temperature

    def _raw_logit_samples(self, x: torch.Tensor, classnames: Sequence[str]) -> torch.Tensor:
        """Monte Carlo logits (S, N, C) from weights drawn from the posterior (prior if unseen)."""
        _, adapter = self._fitted()
        thetas, gen = self._weight_draws()
        s = len(thetas)
        text = self.ctx.text_classifier(list(classnames))
        if isinstance(adapter, ResidualAdapter):
            return torch.stack([adapter.logits(t, x, text) for t in thetas])
        assert isinstance(adapter, LinearHead)
        seen = self._class_map(classnames)
        prior = adapter.class_prior_mean(text)
        noise = torch.randn(s, *prior.shape, generator=gen, dtype=DTYPE,
                            device=gen.device).to(prior.device) * self.prior_var**0.5
        w = (prior + noise).clone()
        trained = thetas.reshape(s, adapter.n_classes, adapter.n_in)
        w[:, seen >= 0] = trained[:, seen[seen >= 0]]
        return torch.einsum("np,scp->snc", adapter.inputs(x), w)

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
        samples = self._logit_samples(features, classnames)
        if self.options["predictive"] == "mc":
            probs = mc_probs(samples)
        else:
            mean, var = self._logit_moments(features, classnames)
            t = self.temperature
            probs = probit_probs(mean / t, var / t**2)
        return Prediction(probs.float(), samples.float())

    def ood_scores(self, features: torch.Tensor, classnames: Sequence[str]) -> dict[str, Any]:
        """Higher = more out-of-distribution: predictive entropy, mutual information (MC), and
        the Mahalanobis rule ``min_c (1 - mu_c/s)^2 / (var_c/s^2 + R)`` on the cosine innovation.
        """
        self._check(features, "ood_scores")
        samples = self._logit_samples(features, classnames).double()
        mean, var = self._logit_moments(features, classnames)
        probs = mc_probs(samples)

        def entropy(p: torch.Tensor) -> torch.Tensor:
            return -(p * p.clamp_min(1e-12).log()).sum(-1)

        total = entropy(probs)
        aleatoric = entropy(samples.softmax(-1)).mean(0)
        scale = self.ctx.backbone.logit_scale
        d2 = (1.0 - mean / scale) ** 2 / (var / scale**2 + self.obs_var)
        return {
            "entropy": total.float(),
            "mutual_information": (total - aleatoric).clamp_min(0).float(),
            "mahalanobis": d2.min(-1).values.float(),
        }

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

    # ----- checkpoints -------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state, _ = self._fitted()
        return {
            "mean": state.mean,
            "cov": state.cov.state_dict(),
            "train_classnames": self.train_classnames,
            "prior_var": self.prior_var,
            "temperature": self.temperature,
            "obs_var": self.obs_var,
            "dim": self.dim,
            "center": self.center,
            "rotation": self.rotation,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.train_classnames = list(state["train_classnames"])
        self.prior_var, self.obs_var, self.dim = state["prior_var"], state["obs_var"], state["dim"]
        self.temperature = float(state.get("temperature", 1.0))
        self._draws = None
        self.center = state.get("center")
        self.rotation = state.get("rotation")
        self.adapter = self._make_adapter(self.ctx.text_classifier(self.train_classnames))
        cov = self._make_cov(self.prior_var)
        cov.load_state_dict(state["cov"])
        self.state = KalmanState(state["mean"], cov)
