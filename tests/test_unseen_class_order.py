"""Classes never trained on: the exact predictive ranks them as their prior means, and the
Monte Carlo estimate is rearranged into that order (checked against Gauss-Hermite quadrature)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from pyro_clip.inference.predictive import mc_predictive, rearrange_exchangeable
from pyro_clip.methods import MethodContext, create_method
from tests.test_kalman_method import NAMES, _synthetic


def _exact_predictive(means: np.ndarray, sd: float, nodes: int = 40) -> np.ndarray:
    """``E softmax(m + sd e)``, ``e ~ N(0, I_3)``, by a tensor Gauss-Hermite rule (float64)."""
    z, w = np.polynomial.hermite_e.hermegauss(nodes)
    w = w / w.sum()
    grid = np.array(list(itertools.product(z, repeat=means.shape[-1])))  # (nodes^3, 3)
    weight = np.prod(np.array(list(itertools.product(w, repeat=means.shape[-1]))), axis=1)
    f = means[:, None, :] + sd * grid[None]
    p = np.exp(f - f.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return (p * weight[None, :, None]).sum(1)


def test_exact_predictive_ranks_as_the_means_and_rearrangement_moves_towards_it():
    rng = np.random.default_rng(0)
    means = rng.normal(0, 0.3, size=(30, 3))  # small gaps, large noise: near-ties
    exact = _exact_predictive(means, sd=2.0)
    assert np.array_equal(exact.argsort(-1), means.argsort(-1))  # the order the proof gives
    gen = torch.Generator().manual_seed(1)
    f = torch.tensor(means)[None] + 2.0 * torch.randn(200, 30, 3, generator=gen,
                                                      dtype=torch.float64)
    raw = f.softmax(-1).mean(0)
    assert not torch.equal(raw.argsort(-1), torch.tensor(means).argsort(-1))  # noise broke it
    fixed = rearrange_exchangeable(raw, torch.tensor(means), torch.arange(3))
    assert torch.equal(fixed.argsort(-1), torch.tensor(means).argsort(-1))
    torch.testing.assert_close(fixed.sort(-1).values, raw.sort(-1).values, rtol=0, atol=0)
    ref = torch.tensor(exact)
    for p in (1, 2):  # rearrangement never moves an estimate away from an ordered target
        assert bool(((fixed - ref).norm(p=p, dim=-1) <= (raw - ref).norm(p=p, dim=-1)
                     + 1e-15).all())


def test_only_the_given_columns_are_reordered():
    probs = torch.tensor([[0.1, 0.2, 0.3, 0.4]], dtype=torch.float64)
    keys = torch.tensor([[3.0, 1.0]])  # column 1 should now hold the larger of its pair
    out = rearrange_exchangeable(probs, keys, torch.tensor([1, 3]))
    torch.testing.assert_close(out, torch.tensor([[0.1, 0.4, 0.3, 0.2]], dtype=torch.float64))
    assert probs[0, 1] == 0.2  # input untouched


@pytest.mark.parametrize("cov", ["full", "block"])
def test_kalman_unseen_classes_rank_as_zero_shot(tiny_backbone, cov):
    ctx = MethodContext(tiny_backbone, seed=3, progress=False)
    s = ctx.backbone.logit_scale
    m = create_method("kalman", covariance=cov, prior_var=1e3, temperature=0.1,
                      prior_scale=s, mc_samples=200).setup(ctx)
    m.fit(_synthetic(ctx, NAMES[:2]), _synthetic(ctx, NAMES[:2], 2, seed=1))
    x = _synthetic(ctx, NAMES, 10, seed=5).features["joint"]
    zs = ctx.zero_shot_logits(x, NAMES).double()
    new = m.predict(x, NAMES[2:]).probs
    assert torch.equal(new.argmax(1), zs[:, 2:].argmax(1))
    torch.testing.assert_close(new.sum(1), torch.ones(len(x)))
    # without the rearrangement the wide prior's draws break some of these rows' order
    raw = mc_predictive(m._row_sampler(x, NAMES[2:], m.temperature), len(x), 200, 2,
                        seed=ctx.seed + 3, replicates=False).probs
    assert not torch.equal(raw.argmax(1), zs[:, 2:].argmax(1))
    torch.testing.assert_close(new.sort(1).values.double(), raw.sort(1).values, atol=1e-6,
                               rtol=0)
    # mixed with trained classes: the unseen columns follow zero-shot, the trained are kept
    mixed = m.predict(x, NAMES).probs
    assert torch.equal(mixed[:, 2:].argsort(1), zs[:, 2:].argsort(1))
