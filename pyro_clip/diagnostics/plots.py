"""Diagnostic figures: reliability diagram with confidence histogram, risk-coverage curves,
OOD score histograms, posterior predictive checks.

Figures are built with ``matplotlib.figure.Figure`` and saved through the Agg canvas, never
pyplot, so the library neither needs a display nor changes a notebook's backend.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from pyro_clip.diagnostics.calibration import ece_equal_width, reliability_bins
from pyro_clip.diagnostics.ood import score_name
from pyro_clip.diagnostics.selective import RiskCoverage
from pyro_clip.utils.io import atomic_write


def save_png(fig: Figure, path: str | Path, dpi: int = 90) -> Path:
    """Write ``fig`` as PNG atomically (tight layout computed once, not on every draw)."""
    fig.tight_layout()
    return atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=dpi))


#: reliability panels per row (a laptop-width figure, never a long strip)
RELIABILITY_COLUMNS = 3


def reliability_figure(
    sets: Mapping[str, tuple[torch.Tensor, torch.Tensor]], bins: int = 15, title: str = ""
) -> Figure:
    """Per set (``name -> (probs, labels)``): accuracy vs confidence per bin above the
    confidence histogram (Guo et al. 2017, fig. 1); the gap to the diagonal is the calibration
    error, the histogram shows how much mass each bin carries. Each panel states its
    equal-width ECE (Guo et al. 2017, eq. 3) over the same ``bins``."""
    cols = min(len(sets), RELIABILITY_COLUMNS)
    rows = -(-len(sets) // cols)
    fig = Figure(figsize=(max(4.2 * cols, 5.6), 5.2 * rows))
    grid = fig.subplots(2 * rows, cols, squeeze=False, height_ratios=[3, 1.3] * rows)
    for ax in grid.ravel()[2 * cols * (rows - 1):]:
        ax.set_visible(len(sets) % cols == 0)
    for k, (name, (probs, labels)) in enumerate(sets.items()):
        row, col = divmod(k, cols)
        axes = grid[2 * row:2 * row + 2]
        axes[0, col].set_visible(True)
        axes[1, col].set_visible(True)
        rb = reliability_bins(probs, labels, bins)
        left, width = rb.edges[:-2], np.diff(rb.edges[:-1])
        # the point bin {confidence = 1} (torchmetrics' extra bin) drawn as a sliver at 1
        if rb.count[-1]:
            w = width[-1]
            left, width = np.append(left, 1 - w / 4), np.append(width[:-1], [0.75 * w, w / 4])
        keep = slice(0, len(left))
        acc, conf_b, count = rb.accuracy[keep], rb.confidence[keep], rb.count[keep]
        top, bottom = axes[0, col], axes[1, col]
        top.bar(left, np.nan_to_num(acc), width, align="edge", edgecolor="k",
                color="C0", label="accuracy")
        gap = np.nan_to_num(conf_b - acc)
        top.bar(left, gap, width, bottom=np.nan_to_num(acc), align="edge",
                color="C3", alpha=0.35, hatch="//", label="gap to confidence")
        for x, w, a, c in zip(left, width, acc, count, strict=True):
            if c:  # the bin count: a 2-image bin must not read like a 200-image one
                top.text(x + w / 2, min(np.nan_to_num(a), 0.93) + 0.02, str(int(c)),
                         ha="center", va="bottom", fontsize=6, rotation=90)
        top.plot([0, 1], [0, 1], "k--", lw=1)
        top.set(xlim=(0, 1), ylim=(0, 1.08), title=name, ylabel="accuracy (n per bin on bars)")
        top.legend(loc="upper left", fontsize=7)
        top.text(0.97, 0.04, f"ECE {ece_equal_width(probs, labels, bins):.3f}\n({bins} bins)",
                 transform=top.transAxes, ha="right", va="bottom", fontsize=9,
                 bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.9})
        bottom.bar(left, count / max(rb.count.sum(), 1), width, align="edge",
                   edgecolor="k", color="C7")
        conf, pred = probs.double().max(-1)
        bottom.axvline(float(conf.mean()), color="C3", ls="--", label="mean confidence")
        bottom.axvline(float((pred == labels).double().mean()), color="C0", ls="-",
                       label="accuracy")
        bottom.set(xlabel="confidence", ylabel="fraction", xlim=(0, 1))
        bottom.legend(loc="upper left", fontsize=7)
    if title:
        fig.suptitle(title)
    return fig


def distinct_colours(n: int) -> list:
    """``n`` colours that stay distinguishable: tab10 / tab20, else evenly spaced on turbo."""
    from matplotlib import colormaps

    if n <= 10:
        return [colormaps["tab10"](i) for i in range(n)]
    if n <= 20:
        return [colormaps["tab20"](i) for i in range(n)]
    return [colormaps["turbo"](i / (n - 1)) for i in range(n)]


def _line_styles(n: int) -> list[str]:
    """Solid lines, and past 10 lines a cycle of dash patterns as a second cue."""
    return ["-"] * n if n <= 10 else [("-", "--", ":", "-.")[i % 4] for i in range(n)]


def risk_coverage_figure(curves: Mapping[str, RiskCoverage], title: str = "") -> Figure:
    """Selective risk vs coverage (accept the most confident first); AURC in the legend."""
    many = len(curves) > 6  # a legend inside the axes would hide the curves
    fig = Figure(figsize=(9, max(3.8, 0.2 * len(curves))) if many else (5, 3.8))
    ax = fig.subplots()
    for (name, rc), colour, style in zip(curves.items(), distinct_colours(len(curves)),
                                         _line_styles(len(curves)), strict=True):
        ax.plot(rc.coverage, rc.risk, color=colour, ls=style, label=f"{name} (AURC {rc.aurc:.3f})")
    ax.set(xlabel="coverage", ylabel="risk (error rate)", xlim=(0, 1), ylim=(0, None),
           title=title or "risk-coverage")
    if many:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    else:
        ax.legend(fontsize=7)
    return fig


#: OOD histogram panels per row (a laptop-width figure, never a long strip)
OOD_COLUMNS = 3


def ood_histogram_figure(
    id_scores: Mapping[str, torch.Tensor],
    ood_scores: Mapping[str, torch.Tensor],
    id_name: str,
    ood_name: str,
    metrics: Mapping[str, Mapping[str, float]] | None = None,
) -> Figure:
    """One panel per score, at most ``OOD_COLUMNS`` per row: histograms of in-distribution vs
    OOD scores (higher = more OOD), AUROC and FPR@95 in the panel title."""
    names = [n for n in id_scores if n in ood_scores]
    cols = min(max(len(names), 1), OOD_COLUMNS)
    rows = -(-max(len(names), 1) // cols)
    fig = Figure(figsize=(max(3.8 * cols, 5.6), 3.2 * rows + 0.3))
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[len(names):]:
        ax.set_visible(False)
    fig.suptitle(f"OOD scores: {id_name} (in-distribution) vs {ood_name}", fontsize=10)
    for ax, name in zip(axes, names, strict=False):
        a, b = id_scores[name].double().numpy(), ood_scores[name].double().numpy()
        edges = np.histogram_bin_edges(np.concatenate([a, b]), bins=30)
        ax.hist(a, edges, alpha=0.55, density=True, label=id_name)
        ax.hist(b, edges, alpha=0.55, density=True, label=ood_name)
        sub = ""
        if metrics and name in metrics:
            sub = (f"\nAUROC {100 * metrics[name]['auroc']:.1f}%, "
                   f"FPR@95 {100 * metrics[name]['fpr95']:.1f}%")
        ax.set(title=f"{score_name(name)}{sub}", xlabel="score (higher = more OOD)")
        ax.title.set_fontsize(9)
        ax.legend(fontsize=7)
    return fig


def ppc_figure(sets: Mapping[str, tuple[torch.Tensor, object]], title: str = "") -> Figure:
    """Per evaluation set (``name -> (probs, PredictiveDraws)``), one row of three checks of
    p(y | x) (:mod:`pyro_clip.diagnostics.ppc`): per-bin accuracy observed vs the replicated
    5-95% band (calibration PPC), the ECE discrepancy's replicated distribution with the
    observed value and its Bayesian p-value, and per-class recall observed vs replicated."""
    from pyro_clip.diagnostics.ppc import calibration_ppc, ppc_checks

    fig = Figure(figsize=(13, 3.7 * len(sets) + 0.4))
    axes = fig.subplots(len(sets), 3, squeeze=False)
    for row, (name, (probs, draws)) in enumerate(sets.items()):
        ece, per_bin = calibration_ppc(probs, draws)
        checks = ppc_checks(probs, draws)
        ax = axes[row, 0]
        full = per_bin.count > 0
        mid = ((per_bin.edges[:-1] + per_bin.edges[1:]) / 2)[full]
        lo, hi = np.nanpercentile(per_bin.replicated[:, full], [5, 95], axis=0)
        ax.fill_between(mid, lo, hi, color="C0", alpha=0.3, label="replicated 5-95%")
        ax.plot(mid, per_bin.observed[full], "ko", ms=4, label="observed")
        ax.plot([0, 1], [0, 1], "k--", lw=0.8)
        for x, c, a in zip(mid, per_bin.count[full], per_bin.observed[full], strict=True):
            ax.annotate(str(int(c)), (x, a), textcoords="offset points", xytext=(0, 5),
                        fontsize=6, ha="center")
        ax.set(xlim=(0, 1), ylim=(0, 1.05), xlabel="confidence bin", ylabel="accuracy",
               title=f"{name}: accuracy per confidence bin (n on points)")
        ax.legend(fontsize=7, loc="upper left")
        ax = axes[row, 1]
        ax.hist(ece.replicated, bins=30, color="C0", alpha=0.6, label="replicated")
        ax.axvline(ece.observed, color="k", lw=2, label=f"observed, p = {ece.p_value:.2f}")
        ax.set(xlabel="T = ECE of the labels (10 bins)", ylabel="draws",
               title=f"{name}: calibration discrepancy")
        ax.legend(fontsize=7)
        ax = axes[row, 2]
        recalls = [checks[f"recall_{c}"] for c in range(probs.shape[1])]
        xs = np.arange(len(recalls))
        rep = np.stack([r.replicated for r in recalls], 1)
        lo, hi = np.nanpercentile(rep, [5, 95], axis=0)
        ax.vlines(xs, lo, hi, color="C0", lw=5, alpha=0.5, label="replicated 5-95%")
        ax.plot(xs, [r.observed for r in recalls], "ko", ms=4, label="observed")
        ax.set(xticks=xs, ylabel="recall", ylim=(0, 1.05), title=f"{name}: per-class recall")
        names = list(getattr(draws, "classnames", None) or [str(x) for x in xs])
        ax.set_xticklabels(names[:len(xs)], fontsize=7, rotation=45, ha="right",
                           rotation_mode="anchor")
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    return fig
