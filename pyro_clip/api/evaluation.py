"""``evaluate``: the metrics and ArviZ diagnostics a CLI run writes, in memory."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pyro_clip.api.model import FittedModel
from pyro_clip.diagnostics.hooks import DEFAULT_DRAWS, diagnose
from pyro_clip.diagnostics.metrics import classification_metrics
from pyro_clip.diagnostics.ppc import PPCResult, ppc_checks
from pyro_clip.errors import DataError
from pyro_clip.pipeline.config import RunConfig
from pyro_clip.pipeline.run import Evaluation, RunResult
from pyro_clip.types import FeatureSet


@dataclass
class EvaluationResult:
    """``metrics[set]`` (accuracy, per-class accuracy, ECE variants, NLL, Brier, AURC, PPC
    summary; ``metrics["ood"]`` with shifted sets), ``idata`` (ArviZ ``InferenceData``:
    held-out ``predictions``, and with the training features a ``log_likelihood`` and
    ``posterior`` summary for Bayesian methods), ``probs[set]`` (N, C) and ``ppc[set][check]``:
    each posterior predictive check behind ``metrics[set]["ppc"]`` in full, the observed
    discrepancy ``T(y)``, its replicates ``T(y*_s)`` (S,) and the Bayesian p-value
    ``P(T(y*) >= T(y))`` (``pyro_clip.diagnostics.ppc``), for plotting the check.

    >>> import torch, pyro_clip as pc
    >>> feats = pc.Features(torch.eye(3), torch.arange(3), ["a", "b", "c"], text=torch.eye(3))
    >>> result = pc.evaluate(pc.fit("zero-shot", feats), feats)
    >>> result.metrics["test"]["accuracy"], result.probs["test"].shape
    (1.0, torch.Size([3, 3]))
    >>> check = result.ppc["test"]["accuracy"]
    >>> check.observed, check.replicated.shape, 0 <= check.p_value <= 1
    (1.0, (100,), True)
    """

    metrics: dict[str, Any]
    idata: Any
    probs: dict[str, torch.Tensor] = field(default_factory=dict)
    ppc: dict[str, dict[str, PPCResult]] = field(default_factory=dict)


def _evaluation(model: FittedModel, name: str, data: FeatureSet) -> Evaluation:
    if not isinstance(data, FeatureSet):
        raise DataError(f"evaluate takes labelled pyro_clip.Features for {name!r}, got "
                        f"{type(data).__name__}")
    inputs = model.method_inputs(data)
    x = inputs.features[model.method.feature_kind]
    pred = model.predictive(data)
    ev = Evaluation(name, pred, data.labels, list(data.classnames),
                    features=x if isinstance(x, torch.Tensor) else None)
    ev.metrics = classification_metrics(pred.probs, data.labels)
    return ev


def evaluate(model: FittedModel, data: FeatureSet, *, name: str = "test",
             shifted: Mapping[str, FeatureSet] | None = None, draws: int = DEFAULT_DRAWS,
             seed: int | None = None) -> EvaluationResult:
    """Evaluate ``model`` on labelled ``data`` as ``pyro-clip fit`` evaluates its test set.

    ``shifted``: more labelled sets by name (e.g. ``{"fashion-mnist-c": feats}``), also
    scored for OOD detection against ``data`` (``metrics["ood"]``). Posterior predictive
    checks use ``draws`` draws seeded by ``seed`` (default: the model's seed). With the
    training features at hand (models from :func:`pyro_clip.fit`), ``idata`` also holds the
    training log-likelihood, so ``arviz.loo`` works for Bayesian methods.

    >>> import torch, pyro_clip as pc
    >>> x, y = torch.randn(40, 8), torch.arange(4).repeat(10)
    >>> feats = pc.Features(x, y, ["a", "b", "c", "d"], text=torch.randn(4, 8))
    >>> result = pc.evaluate(pc.fit("zero-shot", feats), feats)
    >>> sorted(result.idata.groups())[:2], 0 <= result.metrics["test"]["accuracy"] <= 1
    (['observed_data', 'posterior_predictive'], True)
    """
    shifted = dict(shifted or {})
    if name in shifted:
        raise DataError(f"the evaluated set and a shifted set are both named {name!r}; "
                        "rename one (name=... or the shifted mapping's key)")
    evaluations = {n: _evaluation(model, n, d) for n, d in {name: data, **shifted}.items()}
    cfg = RunConfig(method=model.name, seed=int(model.config.get("seed", 1) if seed is None
                                                 else seed),
                    eval_datasets=list(shifted), templates=["{}"])
    result = RunResult(cfg, model.method, evaluations,
                       {n: ev.metrics for n, ev in evaluations.items()}, Path("."))
    if model.train is not None:
        result.train = _evaluation(model, "train", model.train)
    replicates = diagnose(result, draws=draws).draws
    return EvaluationResult(result.metrics, result.idata,
                            {n: ev.prediction.probs for n, ev in evaluations.items()},
                            {n: ppc_checks(ev.prediction.probs, replicates[n])
                             for n, ev in evaluations.items()})
