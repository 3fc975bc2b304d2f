"""The only module that imports ArviZ (0.23 on Python 3.11; 1.x has another API).

One ``InferenceData`` per run, groups with their standard ArviZ meaning (Kumar et al. 2019,
"ArviZ InferenceData schema"):

* ``observed_data.y`` (train_obs): the few-shot *training* labels the posterior is fitted to;
* ``log_likelihood.y`` (chain, draw, train_obs): ``log p(y_i | f_s(x_i))`` of the training data
  per posterior draw, so ``az.loo`` / ``az.waic`` / ``az.compare`` are about the fit;
* ``posterior.train_margin`` (chain, draw, class): a low-dimensional summary of the head's
  posterior (its C*D weights are not stored): per class ``c``, the mean over training images of
  class ``c`` of the logit margin ``f_c - max_{j != c} f_j`` under draw ``s``;
* ``posterior_predictive.y`` (chain, draw, train_obs): replicated training labels;
* ``prior.train_margin`` / ``prior_predictive.y``: the same from the method's prior over
  logits (the zero-shot-centred prior of the Bayesian heads), when it has one;
* ``predictions.y_<set>`` (chain, draw, <set>_obs): posterior predictive labels of each held-out
  evaluation set, ``predictions_constant_data.labels_<set>`` its observed labels.

Methods without a posterior (point estimates) get no ``posterior`` / ``log_likelihood`` groups
(their replicated labels are plug-in draws from ``probs``) and ``attrs["posterior"] = "none"``
(``"draws-not-kept"`` for a Bayesian run whose training-set logits exceeded the kept budget);
:func:`loo` and :func:`compare` then raise :class:`NoPosteriorError` instead of returning a
number that would treat a point estimate as a posterior. Posterior draws are independent
(exact or approximate posteriors sampled directly, not MCMC); the S draws are stored as
``chains`` chains of S / chains draws (default 4 x 250), so R-hat and ESS are defined and
should read ~1 and ~S (a check that the draws are independent and the groups consistent).
:func:`loo` warns when Pareto k exceeds 0.7 (Vehtari et al. 2017: the PSIS estimate of those
points is unreliable).
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from pyro_clip.diagnostics.predictive import PredictiveDraws
from pyro_clip.errors import PyroClipError
from pyro_clip.utils.io import atomic_write

with warnings.catch_warnings():  # ArviZ 0.23 announces its 1.x refactor on import
    warnings.simplefilter("ignore", FutureWarning)
    import arviz as az

InferenceData = az.InferenceData
NO_POSTERIOR = "none"
#: ``attrs["posterior"]`` of a Bayesian run whose training-set logit draws were too large to
#: keep (:data:`pyro_clip.inference.predictive.KEPT_SAMPLES_BYTES`): no log-likelihood
DRAWS_NOT_KEPT = "draws-not-kept"


class NoPosteriorError(PyroClipError, ValueError):
    """LOO/WAIC/compare asked of a run whose method is a point estimate."""


def var_key(name: str) -> str:
    """Identifier-safe suffix of an evaluation set (``fashion-mnist-c`` -> ``fashion_mnist_c``)."""
    return re.sub(r"\W", "_", name)


def train_margin(logits: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """(S, C): per class c, mean over training images of class c of ``f_c - max_{j!=c} f_j``."""
    s, n, _ = logits.shape
    idx = np.arange(n)
    own = logits[:, idx, labels]
    others = logits.copy()
    others[:, idx, labels] = -np.inf
    margin = own - others.max(-1)  # (S, N)
    out = np.full((s, n_classes), np.nan)
    for c in range(n_classes):
        if (labels == c).any():
            out[:, c] = margin[:, labels == c].mean(-1)
    return out


#: chains the independent posterior draws are split into (when they divide evenly)
DEFAULT_CHAINS = 4
#: Pareto k above which a PSIS-LOO point is unreliable (Vehtari et al. 2017)
PARETO_K_WARN = 0.7


def _chains(a: np.ndarray, chains: int) -> np.ndarray:
    """(S, ...) draws -> (chains, S / chains, ...); one chain when ``chains`` does not divide S."""
    c = chains if chains >= 1 and a.shape[0] % chains == 0 else 1
    return a.reshape(c, a.shape[0] // c, *a.shape[1:])


def to_inference_data(
    fit: PredictiveDraws | None,
    heldout: Mapping[str, PredictiveDraws],
    prior: PredictiveDraws | None = None,
    method: str = "",
    chains: int = DEFAULT_CHAINS,
) -> az.InferenceData:
    """Pack the training-set draws ``fit``, the held-out sets and the prior (see module doc).

    ``fit=None`` (a run without its training set, e.g. ``pyro-clip evaluate``) stores the
    held-out groups only, with ``attrs["posterior"] = "none"``. ``chains``: see module doc.
    """
    n_draws = {name: d.predictive.shape[0] for name, d in heldout.items()}
    if len(set(n_draws.values())) > 1:
        raise ValueError(
            f"every evaluation set needs the same number of draws, got {n_draws}; have the "
            "method return the same number of logit samples for every set"
        )
    bayesian = fit is not None and fit.logits is not None and fit.log_likelihood is not None
    coords: dict[str, Any] = {}
    dims: dict[str, list[str]] = {"y": ["train_obs"], "train_margin": ["class"]}
    if fit is not None:
        coords = {"train_obs": np.arange(len(fit.labels)), "class": fit.classnames}
    names, predictions, constant = {}, {}, {}
    for name, d in heldout.items():
        k = var_key(name)
        names[k] = {"name": name, "classnames": list(d.classnames)}
        coords[f"{k}_obs"] = np.arange(len(d.labels))
        dims[f"y_{k}"] = dims[f"labels_{k}"] = [f"{k}_obs"]
        predictions[f"y_{k}"] = _chains(d.predictive, chains)
        constant[f"labels_{k}"] = d.labels
    groups: dict[str, Any] = {
        "predictions": predictions or None,
        "predictions_constant_data": constant or None,
    }
    if fit is not None:
        n_classes = len(fit.classnames)
        groups["observed_data"] = {"y": fit.labels}
        groups["posterior_predictive"] = {"y": _chains(fit.predictive, chains)}
    if bayesian:
        groups["posterior"] = {"train_margin": _chains(
            train_margin(fit.logits, fit.labels, n_classes), chains)}
        groups["log_likelihood"] = {"y": _chains(fit.log_likelihood, chains)}
    if fit is not None and prior is not None and (prior.logits is not None
                                                  or prior.margins is not None):
        margins = (prior.margins if prior.margins is not None
                   else train_margin(prior.logits, prior.labels, n_classes))
        groups["prior"] = {"train_margin": _chains(margins, chains)}
        groups["prior_predictive"] = {"y": _chains(prior.predictive, chains)}
    attrs = {
        "evaluation_sets": json.dumps(names),
        "creator": "pyro_clip.diagnostics",
        "method": method,
        "posterior": ("samples" if bayesian else DRAWS_NOT_KEPT
                      if fit is not None and fit.posterior else NO_POSTERIOR),
        "posterior_note": (
            "independent posterior draws of the logits split into chains; log_likelihood "
            "is the training data's; predictions hold held-out sets" if bayesian else
            "posterior draws too large to keep: posterior_predictive and predictions hold "
            "replicates of all draws, but there is no log_likelihood group (LOO undefined)"
            if fit is not None and fit.posterior else
            "point estimate: no posterior, so no log_likelihood group; LOO/WAIC are undefined "
            "and posterior_predictive holds plug-in draws from the predicted probabilities"
        ),
    }
    return az.from_dict(**groups, coords=coords, dims=dims, attrs=attrs)


def has_posterior(idata: az.InferenceData) -> bool:
    """Whether the run's method had a posterior (and ``log_likelihood`` is meaningful)."""
    return idata.attrs.get("posterior") != NO_POSTERIOR and "log_likelihood" in idata.groups()


def _require_posterior(idata: az.InferenceData, what: str, label: str = "") -> None:
    if not has_posterior(idata):
        method = idata.attrs.get("method") or label or "this run"
        if idata.attrs.get("posterior") == DRAWS_NOT_KEPT:
            raise NoPosteriorError(
                f"{what} needs the training set's logit draws, but {method}'s were too large "
                "to keep (pyro_clip.inference.predictive.KEPT_SAMPLES_BYTES); raise that "
                "budget, or compare by test NLL in metrics.json"
            )
        raise NoPosteriorError(
            f"{what} needs posterior draws, but {method} is a point estimate (no posterior, "
            "no log_likelihood group); compare point estimates by test NLL in metrics.json, "
            "or use a Bayesian method (kalman, laplace, *-ove-pg)"
        )


def loo(idata: az.InferenceData, pointwise: bool = True):
    """PSIS-LOO of the fit (Vehtari et al. 2017) from ``log_likelihood.y``, pointwise values
    included; warns (with the count) when any Pareto k exceeds 0.7."""
    _require_posterior(idata, "LOO")
    with warnings.catch_warnings():  # ArviZ's own message is replaced by the one below
        warnings.simplefilter("ignore", UserWarning)
        result = az.loo(idata, pointwise=True)
    k = np.asarray(result.pareto_k)
    bad = int((k > PARETO_K_WARN).sum())
    if bad:
        warnings.warn(f"PSIS-LOO: {bad} of {k.size} training points have Pareto k > "
                      f"{PARETO_K_WARN} (max {k.max():.2f}); their LOO terms are unreliable. "
                      "Compare runs on held-out NLL instead, or fit with more shots",
                      UserWarning, stacklevel=2)
    return result


def compare(runs: Mapping[str, az.InferenceData]):
    """``az.compare`` (PSIS-LOO, stacking weights) of runs fitted to the *same* training data."""
    for label, idata in runs.items():
        _require_posterior(idata, "az.compare", label)
    observed = [np.asarray(i.observed_data["y"]) for i in runs.values()]
    if any(o.shape != observed[0].shape or (o != observed[0]).any() for o in observed):
        raise ValueError("az.compare needs runs fitted to the same training labels (same data "
                         "set, shots and seed); these runs were fitted to different data")
    return az.compare(dict(runs), ic="loo")


def summary(idata: az.InferenceData, group: str = "posterior"):
    """``az.summary`` of the low-dimensional posterior summary with R-hat and ESS (defined
    with two or more chains; independent draws read R-hat ~ 1)."""
    if group == "posterior":
        _require_posterior(idata, "az.summary of the posterior")
    kind = "all" if idata[group].sizes.get("chain", 1) > 1 else "stats"
    return az.summary(idata, group=group, kind=kind)


def save(idata: az.InferenceData, path: str | Path) -> Path:
    """Write ``idata`` to netCDF (h5netcdf engine, compressed), atomically."""
    return atomic_write(path, lambda p: idata.to_netcdf(str(p), engine="h5netcdf"))


def load(path: str | Path) -> az.InferenceData:
    """Read an ``idata.nc`` written by :func:`save`."""
    return az.from_netcdf(str(path), engine="h5netcdf")


def evaluation_sets(idata: az.InferenceData) -> dict[str, dict]:
    """``{variable suffix: {"name", "classnames"}}`` of the held-out sets stored in the file."""
    return json.loads(idata.attrs.get("evaluation_sets", "{}"))
