"""The Monte Carlo posterior predictive every Bayesian method reports, and its calibration.

With logit draws ``f_s(x)`` from a method's posterior (s = 1..S), the posterior predictive is
``p(y | x, D) = 1/S sum_s softmax(f_s(x) / T)_y`` (BDA3 eq. 1.4 with the integral by Monte
Carlo); the same draws give the PPC replicates ``y*_s ~ Cat(softmax(f_s / T))`` and the
pointwise log-likelihoods, so probabilities, checks, LOO and OOD scores agree by construction.
``T`` is a likelihood temperature chosen on validation data (never on test): the grid value
with the smallest validation NLL of this predictive (:func:`choose_temperature`).

Memory: the draws of a whole evaluation set, (S, N, C), are never held at once. A method
hands over a :data:`RowSampler` (the draws of a slice of rows, the same whatever the slicing)
and :func:`mc_predictive` reduces it chunk by chunk of :func:`row_chunk` rows to what the
diagnostics read: the probabilities, the mutual information ``H(E_s p_s) - E_s H(p_s)``
(Houlsby et al. 2011, eq. 7), one replicated label per draw and row (inverse-CDF with
uniforms drawn once for the whole set, so the replicates do not depend on the chunking), and
the first draws' logits where they fit :data:`KEPT_SAMPLES_BYTES`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from pyro_clip.inference.kalman import probit_probs

#: temperatures tried by default (log-spaced, 1 included)
TEMPERATURE_GRID: tuple[float, ...] = (0.1, 0.15, 0.25, 0.35, 0.5, 0.7, 1.0, 1.4, 2.0)
#: bytes one chunk of float64 draws (S, rows, C) may take, its temporaries included
PREDICTIVE_BYTES = 2**28
#: float64 copies of a chunk alive at once (draws, softmax, log-softmax or cumsum, products)
CHUNK_COPIES = 4
#: bytes of float32 logit draws a prediction keeps for the diagnostics (PPC logits, ArviZ
#: log-likelihood): all S draws when they fit, else the first draws that fit
KEPT_SAMPLES_BYTES = 2**28

#: the logit draws (S, len(rows), C) of a slice of rows; equal whatever the slicing
RowSampler = Callable[[slice], torch.Tensor]


def row_chunk(n_draws: int, n_classes: int, row_bytes: int = 0,
              budget: int | None = None, floor: int = 0) -> int:
    """Rows per chunk: ``max(budget, floor) / (CHUNK_COPIES * 8 S C + row_bytes)`` (at least
    one); ``row_bytes`` is any further per-row memory of the method (e.g. a (C, C)
    covariance), ``floor`` a chunk size worth its overhead (e.g. the weights each chunk reads)."""
    budget = max(PREDICTIVE_BYTES if budget is None else budget, floor)
    per_row = CHUNK_COPIES * 8 * max(n_draws, 1) * max(n_classes, 1) + row_bytes
    return max(1, budget // per_row)


def chunks(n_rows: int, chunk: int) -> Iterator[slice]:
    """Consecutive row slices of at most ``chunk`` rows covering ``0..n_rows-1``."""
    for start in range(0, n_rows, chunk):
        yield slice(start, min(start + chunk, n_rows))


def tensor_sampler(logit_samples: torch.Tensor) -> RowSampler:
    """The :data:`RowSampler` of draws already in memory (S, N, C)."""
    return lambda rows: logit_samples[:, rows]


def kept_draws(n_draws: int, n_rows: int, n_classes: int, chains: int = 1) -> int:
    """Draws whose float32 logits fit :data:`KEPT_SAMPLES_BYTES`: all, else the most that
    fit, rounded down to a multiple of ``chains`` when at least ``chains`` fit."""
    fit = KEPT_SAMPLES_BYTES // max(4 * n_rows * n_classes, 1)
    if fit >= n_draws:
        return n_draws
    return fit - fit % chains if fit >= chains else fit


def mc_probs(logit_samples: torch.Tensor) -> torch.Tensor:
    """``1/S sum_s softmax(f_s)``: (S, N, C) logit draws -> (N, C) probabilities (float64)."""
    return logit_samples.double().softmax(-1).mean(0)


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """``H(p) = -sum_c p_c log p_c`` over the last axis (nats)."""
    return -(probs * probs.clamp_min(1e-300).log()).sum(-1)


@dataclass
class MCPredictive:
    """What the diagnostics read of S draws on N rows (see module docstring)."""

    probs: torch.Tensor  # (N, C) float64, 1/S sum_s softmax(f_s)
    mutual_information: torch.Tensor  # (N,) float64, H(E_s p_s) - E_s H(p_s)
    replicates: torch.Tensor | None  # (S, N) int64, y*_s ~ Cat(softmax f_s)
    logit_samples: torch.Tensor | None  # (S_kept, N, C) float32, the first draws, or None


def mc_predictive(
    sample_rows: RowSampler, n_rows: int, n_draws: int, n_classes: int, seed: int,
    chains: int = 1, replicates: bool = True, chunk: int | None = None,
) -> MCPredictive:
    """Reduce the draws of ``sample_rows`` over ``n_rows`` rows, ``chunk`` rows at a time
    (default :func:`row_chunk`); ``seed`` seeds the replicates' uniforms ``u`` (S, N), and
    ``y*_{s,i} = #{c : sum_{c' <= c} softmax(f_s(x_i))_{c'} < u_{s,i}}`` (inverse CDF)."""
    chunk = row_chunk(n_draws, n_classes) if chunk is None else int(chunk)
    keep = kept_draws(n_draws, n_rows, n_classes, chains)
    u = (torch.rand(n_draws, n_rows, generator=torch.Generator().manual_seed(seed),
                    dtype=torch.float64) if replicates else None)
    probs = mi = reps = kept = None
    for rows in chunks(n_rows, chunk):
        f = sample_rows(rows).double()
        if probs is None:  # allocated on the draws' device
            probs = f.new_empty(n_rows, n_classes)
            mi = f.new_empty(n_rows)
            reps = None if u is None else f.new_empty(n_draws, n_rows, dtype=torch.long)
            kept = f.new_empty(keep, n_rows, n_classes, dtype=torch.float32) if keep else None
        if kept is not None:
            kept[:, rows] = f[:keep]
        p_s = f.softmax(-1)
        del f
        p = p_s.mean(0)
        probs[rows] = p
        mi[rows] = entropy(p) - entropy(p_s).mean(0)
        if reps is not None and u is not None:
            below = p_s.cumsum_(-1) < u[:, rows, None].to(p_s.device)
            reps[:, rows] = below.sum(-1).clamp_max_(n_classes - 1)
    if probs is None:  # no rows
        empty = torch.empty(0, n_classes, dtype=torch.float64)
        return MCPredictive(empty, empty[:, 0],
                            torch.empty(n_draws, 0, dtype=torch.long) if replicates else None,
                            torch.empty(keep, 0, n_classes) if keep else None)
    return MCPredictive(probs, mi, reps, kept)


def rearrange_exchangeable(probs: torch.Tensor, keys: torch.Tensor,
                           columns: torch.Tensor) -> torch.Tensor:
    """Reorder each row's probabilities of ``columns`` to follow ``keys`` (N, len(columns)).

    Classes whose logits are independent with equal variance and differ only in their means
    (e.g. classes never trained on, which keep their prior ``N(s t_c, v I)`` weights) have
    exchangeable noise, and the exact predictive ranks them as their mean logits: swapping
    the noise of ``i`` and ``j`` pairs every draw with one of equal density, and with
    ``A = e^{m_i} >= B = e^{m_j}``, noise factors ``u, v`` and the rest ``R >= 0``,
    ``(Au - Bv)/Z + (Av - Bu)/Z' = [2uv(A^2 - B^2) + R(u + v)(A - B)] / (Z Z') >= 0``. A Monte
    Carlo estimate can break that order by sampling noise; sorting the estimates into the
    known order (rearrangement, Chernozhukov, Fernandez-Val & Galichon 2009, Prop. 1: never
    farther from an ordered target in any l_p norm) keeps each row's sum, entropy and values.
    Returns a new (N, C) tensor; ``probs`` is not changed."""
    out = probs.clone()
    if len(columns) < 2:
        return out
    block = probs[:, columns]
    order = keys.to(block.device).argsort(dim=-1, stable=True)  # ascending mean logits
    out[:, columns] = block.scatter(1, order, block.sort(-1).values)
    return out


def mc_log_predictive(logit_samples: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``log 1/S sum_s softmax(f_s)_{y_i}`` per example (N,), by log-sum-exp."""
    logp = logit_samples.double().log_softmax(-1)
    idx = labels.to(logp.device)
    picked = logp[:, torch.arange(logp.shape[1], device=logp.device), idx]  # (S, N)
    return torch.logsumexp(picked, 0) - math.log(logp.shape[0])


def choose_temperature(
    logit_samples: torch.Tensor | RowSampler, labels: torch.Tensor,
    grid: Sequence[float] = TEMPERATURE_GRID, chunk: int | None = None,
) -> tuple[float, dict[str, float]]:
    """The grid temperature minimising the validation NLL ``-mean_i log p(y_i | x_i, D)`` of
    the predictive with draws ``f_s / T``; returns it and the NLL of every grid value.

    ``logit_samples``: the draws (S, N, C), or a :data:`RowSampler` read ``chunk`` rows at a
    time (then ``chunk`` is required)."""
    if not grid or any(t <= 0 for t in grid):
        raise ValueError(f"temperature grid must be non-empty and positive, got {list(grid)}")
    if isinstance(logit_samples, torch.Tensor):
        sampler, chunk = tensor_sampler(logit_samples), chunk or max(1, len(labels))
    elif chunk is None:
        raise ValueError("choose_temperature: a row sampler needs chunk=<rows per chunk>")
    else:
        sampler = logit_samples
    totals = dict.fromkeys((str(float(t)) for t in grid), 0.0)
    for rows in chunks(len(labels), chunk):
        f = sampler(rows)
        for t in grid:
            totals[str(float(t))] -= float(mc_log_predictive(f / t, labels[rows]).sum())
    nlls = {k: v / max(len(labels), 1) for k, v in totals.items()}
    best = min(nlls, key=lambda k: (nlls[k], abs(math.log(float(k)))))
    return float(best), nlls


def choose_probit_temperature(
    mean: torch.Tensor, var: torch.Tensor, labels: torch.Tensor, grid: Sequence[float],
) -> tuple[float, dict[str, float]]:
    """The grid temperature minimising the validation NLL of the probit predictive: logits
    ``f ~ N(mean, var)`` scaled to ``f / T`` give ``probit_probs(mean / T, var / T^2)``
    (:func:`~pyro_clip.inference.kalman.probit_probs`); returns it and every grid NLL."""
    idx = torch.arange(len(labels))
    nlls = {str(t): float(-probit_probs(mean / t, var / t**2)[idx, labels]
                          .clamp_min(1e-12).log().mean()) for t in grid}
    return float(min(nlls, key=nlls.__getitem__)), nlls

