"""The only module that imports ArviZ (0.23 on Python 3.11; 1.x has another API).

One ``InferenceData`` per run, one set of variables per evaluation set ``k`` (name made
identifier-safe; ``attrs["evaluation_sets"]`` maps it to the set's name and class names):
``posterior.logits_k`` (chain, draw, k_obs, k_class) when the method has posterior samples,
``posterior_predictive.y_k`` (chain, draw, k_obs), ``observed_data.y_k`` (k_obs) and
``log_likelihood.y_k`` (chain, draw, k_obs).
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from pyro_clip.diagnostics.predictive import PredictiveDraws
from pyro_clip.io import atomic_write

with warnings.catch_warnings():  # ArviZ 0.23 announces its 1.x refactor on import
    warnings.simplefilter("ignore", FutureWarning)
    import arviz as az

InferenceData = az.InferenceData


def var_key(name: str) -> str:
    """Identifier-safe suffix of an evaluation set (``fashion-mnist-c`` -> ``fashion_mnist_c``)."""
    return re.sub(r"\W", "_", name)


def to_inference_data(sets: Mapping[str, PredictiveDraws]) -> az.InferenceData:
    """Pack every evaluation set's draws into one ``InferenceData`` (chain = 1)."""
    posterior, pp, obs, loglik, coords, dims = {}, {}, {}, {}, {}, {}
    names = {}
    n_draws = {name: d.predictive.shape[0] for name, d in sets.items()}
    if len(set(n_draws.values())) > 1:
        raise ValueError(
            f"every evaluation set needs the same number of draws, got {n_draws}; have the "
            "method return the same number of logit samples for every set"
        )
    for name, d in sets.items():
        k = var_key(name)
        names[k] = {"name": name, "classnames": list(d.classnames)}
        obs_dim, class_dim = f"{k}_obs", f"{k}_class"
        coords[class_dim] = list(d.classnames)
        coords[obs_dim] = np.arange(len(d.labels))
        y = f"y_{k}"
        dims[y] = [obs_dim]
        obs[y] = d.labels
        pp[y] = d.predictive[None]
        loglik[y] = d.log_likelihood[None]
        if d.logits is not None:
            posterior[f"logits_{k}"] = d.logits[None]
            dims[f"logits_{k}"] = [obs_dim, class_dim]
    return az.from_dict(
        posterior=posterior or None,
        posterior_predictive=pp,
        observed_data=obs,
        log_likelihood=loglik,
        coords=coords,
        dims=dims,
        attrs={"evaluation_sets": json.dumps(names), "creator": "pyro_clip.diagnostics"},
    )


def save(idata: az.InferenceData, path: str | Path) -> Path:
    """Write ``idata`` to netCDF (h5netcdf engine, compressed), atomically."""
    return atomic_write(path, lambda p: idata.to_netcdf(str(p), engine="h5netcdf"))


def load(path: str | Path) -> az.InferenceData:
    """Read an ``idata.nc`` written by :func:`save`."""
    return az.from_netcdf(str(path), engine="h5netcdf")


def evaluation_sets(idata: az.InferenceData) -> dict[str, dict]:
    """``{variable suffix: {"name", "classnames"}}`` stored in the file."""
    return json.loads(idata.attrs.get("evaluation_sets", "{}"))


def plot_ppc_labels(idata: az.InferenceData, name: str, ax, num_pp_samples: int = 50) -> None:
    """``az.plot_ppc`` of the predicted labels: per-class counts, observed vs predictive draws."""
    var = f"y_{var_key(name)}"
    total = idata.posterior_predictive[var].sizes["draw"] * idata.posterior_predictive[var].sizes[
        "chain"
    ]
    az.plot_ppc(idata, var_names=[var], num_pp_samples=min(num_pp_samples, total),
                random_seed=0, ax=ax, legend=True)


def plot_bpv_max_class_share(idata: az.InferenceData, name: str, ax) -> None:
    """``az.plot_bpv`` (kind ``t_stat``) with T(y) = largest class share, max_c #{y_i = c}/N.

    T detects predictive collapse onto a few classes (a weak prior's typical failure); the
    Bayesian p-value p(T(y*) <= T(y)) should be near 0.5.
    """
    n_classes = len(evaluation_sets(idata)[var_key(name)]["classnames"])

    def max_class_share(y: np.ndarray) -> np.ndarray:
        y = np.asarray(y)
        return np.stack([(y == c).mean(-1) for c in range(n_classes)]).max(0)

    az.plot_bpv(idata, kind="t_stat", t_stat=max_class_share, var_names=[f"y_{var_key(name)}"],
                ax=ax)
