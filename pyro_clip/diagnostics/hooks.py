"""The run hook: every run writes ``idata.nc``, the extra metrics and PNG plots.

Method-agnostic by construction: it reads only ``Evaluation.prediction`` (``probs``, optional
``logit_samples``), labels, class names and the method's two diagnostic hooks,
``method.ood_scores(features, classnames) -> {name: (N,) tensor}`` and
``method.logit_prior(features, classnames) -> Distribution | None`` (:class:`MethodLike`;
:class:`~pyro_clip.methods.base.Method` declares both with empty defaults).

Dependency runs one way: ``runner`` imports this module; this module never imports ``runner``
(the run result is described by the :class:`RunLike` protocol).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from pyro_clip.diagnostics.calibration import calibration_metrics
from pyro_clip.diagnostics.ood import ood_metrics, prediction_scores
from pyro_clip.diagnostics.selective import risk_coverage, selective_metrics
from pyro_clip.utils.io import write_json

#: posterior predictive draws for methods without posterior samples (and prior draws)
DEFAULT_DRAWS = 100
PLOTS_DIR = "plots"
IN_DISTRIBUTION = ("test", "base")


class EvaluationLike(Protocol):
    """What the hook reads of ``runner.Evaluation``."""

    name: str
    prediction: Any  # methods.Prediction: probs (N, C), logit_samples (S, N, C) | None, ...
    labels: torch.Tensor
    classnames: list[str]
    features: torch.Tensor | None


class MethodLike(Protocol):
    """The hooks the diagnostics call on a fitted method (``methods.base.Method`` has them)."""

    name: str

    def ood_scores(self, features: torch.Tensor, classnames: list[str]
                   ) -> Mapping[str, torch.Tensor]: ...

    def logit_prior(self, features: torch.Tensor, classnames: list[str]) -> Any: ...


class RunLike(Protocol):
    """What the hook reads and sets of ``runner.RunResult``."""

    config: Any
    method: MethodLike
    evaluations: Mapping[str, EvaluationLike]
    metrics: dict[str, Any]
    out: Path
    train: EvaluationLike | None
    idata: Any
    #: optional: images of classes the model was not fitted to, predicted over the fitted
    #: classes (base-to-new: the new classes' test images), scored as semantic OOD
    semantic_ood: Mapping[str, EvaluationLike]


def evaluation_scores(method: MethodLike, ev: EvaluationLike) -> dict[str, torch.Tensor]:
    """Built-in scores from the prediction (``msp``, ``entropy``, ``mutual_information``) plus
    the method's own ``ood_scores``, if any, always named ``<method>:<score>``."""
    pred = ev.prediction
    scores = prediction_scores(pred.probs, pred.logit_samples,
                               getattr(pred, "mutual_information", None))
    if ev.features is not None:
        for name, value in method.ood_scores(ev.features, ev.classnames).items():
            value = torch.as_tensor(value).double().flatten()
            if value.shape != (len(ev.labels),):
                raise ValueError(
                    f"{type(method).__name__}.ood_scores returned {name!r} with shape "
                    f"{tuple(value.shape)}; expected one score per example ({len(ev.labels)},)"
                )
            scores[f"{method.name}:{name}"] = value
    return scores


def split_sets(result: RunLike) -> tuple[str | None, list[str]]:
    """The in-distribution set (``test`` or ``base``) and the shifted/OOD sets of a run."""
    id_name = next((n for n in IN_DISTRIBUTION if n in result.evaluations), None)
    evals = result.config.resolved().eval_datasets  # None in a config = the companions
    ood = [n for n in evals if n in result.evaluations and n != id_name]
    return id_name, ood


def _draws(ev: EvaluationLike, draws: int, seed: int) -> Any:
    from pyro_clip.diagnostics.predictive import predictive_draws

    pred = ev.prediction
    return predictive_draws(pred.probs, ev.labels, ev.classnames, pred.logit_samples, draws,
                            seed=seed, replicates=getattr(pred, "replicates", None))


def prior_draws(method: MethodLike, ev: EvaluationLike, draws: int, seed: int) -> Any:
    """Prior draws on ``ev``'s inputs from ``method.logit_prior``, or None without one: per
    logit draw ``f_s`` (N, C), drawn one at a time so that only one is held, the replicated
    labels ``y*_s ~ Cat(softmax f_s)`` and the per-class training margins (ArviZ ``prior``)."""
    from pyro_clip.diagnostics.arviz_io import train_margin
    from pyro_clip.diagnostics.predictive import PredictiveDraws

    if ev.features is None:
        return None
    with torch.no_grad():
        prior = method.logit_prior(ev.features, ev.classnames)
    if prior is None:
        return None
    labels = ev.labels.cpu().numpy().astype(np.int64)
    gen = torch.Generator().manual_seed(seed)
    reps, margins = [], []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _ in range(draws):
            f = prior.sample().detach().cpu().double()
            reps.append(torch.multinomial(f.softmax(-1), 1, generator=gen)[:, 0])
            margins.append(train_margin(f.float().numpy()[None], labels,
                                        len(ev.classnames))[0])
    return PredictiveDraws(labels, list(ev.classnames), torch.stack(reps).numpy(), None,
                           posterior=True, margins=np.stack(margins))


@dataclass
class Diagnosis:
    """What :func:`diagnose` computed besides the metrics: per-set OOD scores and predictive
    draws, the in-distribution set and the shifted sets."""

    scores: dict[str, dict[str, torch.Tensor]]
    draws: dict[str, Any]
    id_name: str | None
    ood_names: list[str]


def diagnose(
    result: RunLike, draws: int = DEFAULT_DRAWS, bins: int = 15, idata: bool = True
) -> Diagnosis:
    """Merge calibration/selective/OOD/PPC metrics into ``result.metrics`` and, with ``idata``,
    set ``result.idata`` (ArviZ); writes nothing."""
    from pyro_clip.diagnostics.ppc import ppc_checks, ppc_summary

    evs = result.evaluations
    seed = int(result.config.seed)
    for name, ev in evs.items():
        probs = ev.prediction.probs.double()
        result.metrics[name].update(calibration_metrics(probs, ev.labels, bins))
        result.metrics[name].update(selective_metrics(probs, ev.labels))

    id_name, ood_names = split_sets(result)
    scores = {n: evaluation_scores(result.method, evs[n]) for n in (id_name, *ood_names)
              if n is not None}
    if id_name is not None and ood_names:
        result.metrics["ood"] = {
            "in_distribution": id_name,
            **{n: ood_metrics(scores[id_name], scores[n]) for n in ood_names},
        }
    semantic = getattr(result, "semantic_ood", None) or {}
    if id_name is not None and semantic:  # new classes' images vs the base-class model
        result.metrics["semantic_ood"] = {
            "in_distribution": id_name,
            **{n: ood_metrics(scores[id_name], evaluation_scores(result.method, ev))
               for n, ev in semantic.items()},
        }
    sets = {name: _draws(ev, draws, seed + i) for i, (name, ev) in enumerate(evs.items())}
    checks = {name: ppc_checks(evs[name].prediction.probs, d) for name, d in sets.items()}
    for name, c in checks.items():  # every evaluation set is held out from the fit
        result.metrics[name]["ppc"] = {"data": "held-out", **ppc_summary(c)}
    if idata:
        from pyro_clip.diagnostics import arviz_io

        train = getattr(result, "train", None)
        fit = _draws(train, draws, seed + 1000) if train is not None else None
        prior = (prior_draws(result.method, train, draws, seed + 2000) if train is not None
                 else None)
        chains = int(getattr(result.method, "options", {}).get("chains",
                                                               arviz_io.DEFAULT_CHAINS))
        result.idata = arviz_io.to_inference_data(fit, sets, prior,
                                                  method=str(result.config.method),
                                                  chains=chains)
    return Diagnosis(scores, sets, id_name, ood_names)


def diagnose_run(
    result: RunLike, draws: int = DEFAULT_DRAWS, bins: int = 15, artifacts: bool = True
) -> None:
    """:func:`diagnose`, then write ``metrics.json`` and, with ``artifacts``, ``idata.nc``
    and the plots into ``result.out``.

    ``artifacts=False`` writes the metrics only (benchmark suites skip the plots).
    """
    out, evs = result.out, result.evaluations
    diag = diagnose(result, draws, bins, idata=artifacts)
    if not artifacts:
        write_json(out / "metrics.json", result.metrics)
        return

    from pyro_clip.diagnostics import arviz_io, plots

    arviz_io.save(result.idata, out / "idata.nc")
    write_json(out / "metrics.json", result.metrics)

    id_name, ood_names, scores, sets = diag.id_name, diag.ood_names, diag.scores, diag.draws
    title = f"{result.config.method} ({result.config.protocol})"
    pdir = out / PLOTS_DIR
    pairs = {n: (ev.prediction.probs, ev.labels) for n, ev in evs.items()}
    plots.save_png(plots.reliability_figure(pairs, bins, title), pdir / "reliability.png")
    curves = {n: risk_coverage(p, y) for n, (p, y) in pairs.items()}
    plots.save_png(plots.risk_coverage_figure(curves, title), pdir / "risk_coverage.png")
    for n in ood_names:
        fig = plots.ood_histogram_figure(scores[id_name], scores[n], id_name, n,
                                         result.metrics["ood"][n])
        plots.save_png(fig, pdir / f"ood_{arviz_io.var_key(n)}.png")
    # posterior predictive where the plotted sets' draws come from logit samples (also in
    # `pyro-clip evaluate`, which has no training set); plug-in draws from probs otherwise
    bayes = any(d.posterior for d in sets.values())
    plots.save_png(plots.ppc_figure({n: (evs[n].prediction.probs, d) for n, d in sets.items()},
                                    f"{title}: held-out posterior predictive checks of p(y|x)"
                                    if bayes else
                                    f"{title}: held-out plug-in checks (point estimate)"),
                   pdir / "ppc.png")


#: the hook without idata.nc and plots (same metrics)
metrics_only_hook = functools.partial(diagnose_run, artifacts=False)
