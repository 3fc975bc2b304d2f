"""Figures that compare runs (one line per run): risk-coverage and the robustness curve."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.figure import Figure

from pyro_clip.diagnostics.plots import distinct_colours, risk_coverage_figure, save_png

#: (key of a severity point, axis label) of the robustness panels
ROBUSTNESS_PANELS = (("accuracy", "accuracy"), ("ece", "ECE (equal-width, 15 bins)"),
                     ("auroc", "OOD AUROC vs clean test (max prob.)"))


def robustness_figure(curves: Mapping[str, Sequence[Mapping[str, float]]],
                      title: str = "") -> Figure:
    """Accuracy, ECE and OOD AUROC against corruption severity 1-5, one line per run
    (Hendrycks & Dietterich 2019, fig. 4's style); ``curves``: label -> severity points."""
    fig = Figure(figsize=(12, 4.2))
    axes = fig.subplots(1, len(ROBUSTNESS_PANELS))
    colours = distinct_colours(len(curves))
    for ax, (key, ylabel) in zip(axes, ROBUSTNESS_PANELS, strict=True):
        for (label, points), colour in zip(curves.items(), colours, strict=True):
            xs = [p["severity"] for p in points if p.get(key) is not None]
            ys = [p[key] for p in points if p.get(key) is not None]
            ax.plot(xs, ys, "o-", color=colour, label=label, ms=4)
        ax.set(xlabel="corruption severity", ylabel=ylabel, xticks=[1, 2, 3, 4, 5],
               xlim=(0.8, 5.2))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower left")
    if title:
        fig.suptitle(title)
    return fig


def save_robustness(curves: Mapping[str, Sequence[Mapping[str, float]]], title: str,
                    path: Path) -> Path:
    return save_png(robustness_figure(curves, title), path)


def save_risk_coverage(curves: Mapping, title: str, path: Path) -> Path:
    return save_png(risk_coverage_figure(curves, title), path)
