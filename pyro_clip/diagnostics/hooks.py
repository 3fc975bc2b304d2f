"""The run hook: every run writes ``idata.nc``, the extra metrics and PNG plots.

Method-agnostic by construction: it reads only ``Evaluation.prediction`` (``probs``, optional
``logit_samples``), labels, class names and, when the method has one, calls
``method.ood_scores(features, classnames) -> {name: (N,) tensor}`` (duck typing).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from pyro_clip.diagnostics.calibration import calibration_metrics
from pyro_clip.diagnostics.ood import ood_metrics, prediction_scores
from pyro_clip.diagnostics.selective import risk_coverage, selective_metrics
from pyro_clip.io import write_json

if TYPE_CHECKING:
    from pyro_clip.runner import Evaluation, RunResult

#: posterior predictive draws for methods without posterior samples
DEFAULT_DRAWS = 100
PLOTS_DIR = "plots"
IN_DISTRIBUTION = ("test", "base")


def evaluation_scores(method: Any, ev: Evaluation) -> dict[str, torch.Tensor]:
    """Built-in scores from the prediction plus the method's own ``ood_scores``, if any."""
    scores = prediction_scores(ev.prediction.probs, ev.prediction.logit_samples)
    extra = getattr(method, "ood_scores", None)
    features = getattr(ev, "features", None)
    if callable(extra) and features is not None:
        for name, value in extra(features, ev.classnames).items():
            value = torch.as_tensor(value).double().flatten()
            if value.shape != (len(ev.labels),):
                raise ValueError(
                    f"{type(method).__name__}.ood_scores returned {name!r} with shape "
                    f"{tuple(value.shape)}; expected one score per example ({len(ev.labels)},)"
                )
            scores[name if name not in scores else f"{method.name}:{name}"] = value
    return scores


def split_sets(result: RunResult) -> tuple[str | None, list[str]]:
    """The in-distribution set (``test`` or ``base``) and the shifted/OOD sets of a run."""
    id_name = next((n for n in IN_DISTRIBUTION if n in result.evaluations), None)
    evals = result.config.resolved().eval_datasets  # None in a config = the companions
    ood = [n for n in evals if n in result.evaluations and n != id_name]
    return id_name, ood


def diagnose_run(
    result: RunResult, draws: int = DEFAULT_DRAWS, bins: int = 15, artifacts: bool = True
) -> None:
    """Merge calibration/selective/OOD metrics into ``metrics.json``; write idata.nc and plots.

    ``artifacts=False`` writes the metrics only (plots cost ~4 s per run; benchmark suites).
    """
    out, evs = result.out, result.evaluations
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
    if not artifacts:
        write_json(out / "metrics.json", result.metrics)
        return

    from pyro_clip.diagnostics import arviz_io, plots
    from pyro_clip.diagnostics.predictive import predictive_draws

    sets = {
        name: predictive_draws(ev.prediction.probs, ev.labels, ev.classnames,
                               ev.prediction.logit_samples, draws, seed=result.config.seed + i)
        for i, (name, ev) in enumerate(evs.items())
    }
    idata = arviz_io.to_inference_data(sets)
    arviz_io.save(idata, out / "idata.nc")
    write_json(out / "metrics.json", result.metrics)

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
    plots.save_png(plots.ppc_figure(idata, list(evs)), pdir / "ppc.png")


#: the hook without idata.nc and plots (same metrics)
metrics_only_hook = functools.partial(diagnose_run, artifacts=False)


def register_diagnostics(hooks: list[Callable[[RunResult], None]]) -> None:
    """Add :func:`diagnose_run` to a runner's hook list (idempotent)."""
    if diagnose_run not in hooks:
        hooks.append(diagnose_run)
