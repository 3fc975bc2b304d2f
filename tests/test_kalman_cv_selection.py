"""``selection=cv``: kalman's prior variance and temperature by k-fold cross-validation, checked
against fits of the same folds made from outside the method."""

from __future__ import annotations

import warnings

import pytest
import torch

from pyro_clip.errors import ConfigError
from pyro_clip.features.cache import FeatureSet
from pyro_clip.methods import MethodContext, create_method
from pyro_clip.training.selection import stratified_folds
from tests.test_kalman_method import NAMES, _synthetic

GRID = [0.03, 0.3]  # x logit_scale^2
TEMPS = [0.5, 1.0]


def test_stratified_folds_partition_every_class_evenly():
    labels = torch.tensor([0] * 7 + [1] * 5 + [2] * 3)
    folds = stratified_folds(labels, 3, seed=4)
    assert sorted(torch.cat(folds).tolist()) == list(range(len(labels)))
    for c in range(3):
        counts = [int((labels[f] == c).sum()) for f in folds]
        assert max(counts) - min(counts) <= 1
    assert max(map(len, folds)) - min(map(len, folds)) <= 1
    again = stratified_folds(labels, 3, seed=4)
    assert all(torch.equal(a, b) for a, b in zip(folds, again, strict=True))
    with pytest.raises(ConfigError, match="2 <= folds"):
        stratified_folds(labels, 1, seed=0)


def _subset(fs: FeatureSet, idx: torch.Tensor) -> FeatureSet:
    return FeatureSet({"joint": fs.features["joint"][idx]}, fs.labels[idx], list(fs.classnames),
                      fs.name)


def test_cv_choice_matches_fold_fits_made_outside(tiny_backbone):
    ctx = MethodContext(tiny_backbone, seed=3, progress=False)
    s = ctx.backbone.logit_scale
    base = {"covariance": "full", "prior_scale": s, "mc_samples": 200}
    train, val = _synthetic(ctx, NAMES, noise=1.5), _synthetic(ctx, NAMES, 2, seed=1, noise=1.5)
    m = create_method("kalman", selection="cv", cv_folds=3, prior_var_grid=GRID,
                      temperature_grid=TEMPS, **base).setup(ctx)
    m.fit(train, val)
    pool = FeatureSet({"joint": torch.cat([train.features["joint"], val.features["joint"]])},
                      torch.cat([train.labels, val.labels]), list(NAMES), "pool")
    empty = _subset(pool, torch.tensor([], dtype=torch.long))
    table = m.selected["cv_nll_by_prior_var_and_temperature"]
    ref = {}
    for g in GRID:
        for t in TEMPS:
            total = 0.0
            for held in stratified_folds(pool.labels, 3, seed=3):
                keep = torch.ones(len(pool), dtype=torch.bool)
                keep[held] = False
                f = create_method("kalman", prior_var=g * s**2, temperature=t, **base).setup(ctx)
                f.fit(_subset(pool, keep.nonzero()[:, 0]), empty)
                p = f.predict(pool.features["joint"][held], NAMES).probs.double()
                total -= float(p[torch.arange(len(held)), pool.labels[held]].log().sum())
            ref[(g * s**2, t)] = total / len(pool)
            assert table[f"{g * s**2:g}"][f"{t:g}"] == pytest.approx(ref[(g * s**2, t)],
                                                                      rel=1e-5)
    best = min(ref, key=ref.__getitem__)
    assert (m.prior_var, m.temperature) == pytest.approx(best)
    assert m.selected["cv_examples"] == len(pool) and m.selected["selection"] == "cv"


def test_cv_needs_no_validation_split(tiny_backbone):
    ctx = MethodContext(tiny_backbone, seed=3, progress=False)
    train = _synthetic(ctx, NAMES, noise=1.5)
    m = create_method("kalman", selection="cv", cv_folds=3, prior_var_grid=GRID,
                      temperature_grid=TEMPS, covariance="block",
                      mc_samples=100).setup(ctx)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no "used unchosen" warning
        m.fit(train, _subset(train, torch.tensor([], dtype=torch.long)))
    assert m.selected["cv_examples"] == len(train)
    assert torch.isfinite(m.predict(train.features["joint"], NAMES).probs).all()
