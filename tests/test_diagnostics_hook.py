"""The run hook on hand-built runs: idata.nc groups, merged metrics and plots."""

import json
import math

import numpy as np
import pyro.distributions
import pytest
import torch

from pyro_clip.diagnostics import arviz_io
from pyro_clip.diagnostics.hooks import diagnose_run
from pyro_clip.diagnostics.metrics import classification_metrics
from pyro_clip.methods import Prediction, create_method, get_method_class
from pyro_clip.pipeline.config import RunConfig
from pyro_clip.pipeline.run import RUN_HOOKS, Evaluation, RunResult

CLASSES = ["a", "b", "c"]


def make_run(tmp_path, logit_samples: bool, method=None, n=60, s=8, seed=0, n_train=30):
    """A training set plus two evaluation sets (test + a shifted set), known predictions."""
    gen = torch.Generator().manual_seed(seed)
    evs = {}
    for name, scale in (("train", 3.0), ("test", 3.0), ("fashion-mnist-c", 0.5)):
        size = n_train if name == "train" else n
        labels = torch.randint(0, 3, (size,), generator=gen)
        mean = torch.nn.functional.one_hot(labels, 3).double() * scale
        samples = mean + torch.randn(s, size, 3, generator=gen, dtype=torch.float64)
        probs = samples.softmax(-1).mean(0)
        pred = Prediction(probs, samples if logit_samples else None)
        feats = torch.randn(size, 4, generator=gen)
        evs[name] = Evaluation(name, pred, labels, CLASSES, classification_metrics(probs, labels),
                               features=feats)
    train = evs.pop("train")
    cfg = RunConfig(method="zero-shot", out=str(tmp_path), seed=5)
    method = method or create_method("zero-shot")
    metrics = {k: ev.metrics for k, ev in evs.items()}
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "config.json").write_text(json.dumps({**cfg.to_dict()}))
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    return RunResult(cfg, method, evs, metrics, tmp_path, train=train)


def test_hook_is_registered_and_hooks_do_not_import_the_runner():
    assert diagnose_run in RUN_HOOKS
    from pathlib import Path

    import pyro_clip.diagnostics.hooks as hooks

    source = Path(hooks.__file__).read_text()
    assert "pyro_clip.pipeline.run" not in source  # one direction: runner -> diagnostics


def test_idata_groups_have_their_arviz_meaning(tmp_path):
    run = make_run(tmp_path, logit_samples=True, s=16)
    diagnose_run(run)
    idata = arviz_io.load(tmp_path / "idata.nc")
    assert run.idata is not None and set(run.idata.groups()) == set(idata.groups())
    assert {"posterior", "log_likelihood", "posterior_predictive", "observed_data",
            "predictions", "predictions_constant_data"} <= set(idata.groups())
    train = run.train
    s = train.prediction.logit_samples.numpy()
    y = train.labels.numpy()
    # log_likelihood: the TRAINING data's log softmax at the observed label, per draw (by hand)
    # the 16 independent draws are stored as 4 chains x 4 draws (R-hat and ESS defined)
    assert idata.log_likelihood["y"].shape == (4, 4, 30)
    ll = idata.log_likelihood["y"].values.reshape(16, 30)
    by_hand = s[:, np.arange(30), y] - np.log(np.exp(s).sum(-1))
    np.testing.assert_allclose(ll, by_hand, rtol=1e-12)
    np.testing.assert_array_equal(idata.observed_data["y"].values, y)
    # posterior summary: per class, mean margin f_y - max_{j != y} f_j of its training images
    margin = idata.posterior["train_margin"].values.reshape(16, 3)  # (chain x draw, class)
    s32 = s.astype(np.float32)  # idata keeps the logit draws in float32
    for c in range(3):
        rows = np.flatnonzero(y == c)
        others = np.delete(s32[:, rows], c, axis=-1).max(-1)
        np.testing.assert_allclose(margin[:, c], (s32[:, rows, c] - others).mean(-1),
                                   rtol=1e-6, atol=1e-6)
    # held-out sets: predictions + their labels as constant data, not in log_likelihood
    assert set(idata.log_likelihood.data_vars) == {"y"}
    pp = idata.predictions["y_fashion_mnist_c"].values
    assert pp.shape == (4, 4, 60) and set(np.unique(pp)) <= {0, 1, 2}
    np.testing.assert_array_equal(idata.predictions_constant_data["labels_test"].values,
                                  run.evaluations["test"].labels.numpy())
    sets = arviz_io.evaluation_sets(idata)
    assert sets["fashion_mnist_c"] == {"name": "fashion-mnist-c", "classnames": CLASSES}
    assert idata.attrs["posterior"] == "samples"
    loo = arviz_io.loo(idata)
    assert np.isfinite(loo.elpd_loo) and loo.n_data_points == 30
    summary = arviz_io.summary(idata)
    assert len(summary) == 3 and np.isfinite(summary["r_hat"]).all()
    assert np.isfinite(summary["ess_bulk"]).all()
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert set(m["test"]["ppc"]) >= {"p_calibration", "p_accuracy", "p_log_score"}
    assert m["test"]["ppc"]["data"] == "held-out"


def test_point_estimate_has_no_posterior_and_loo_says_so(tmp_path):
    run = make_run(tmp_path, logit_samples=False)
    diagnose_run(run, draws=40)
    idata = arviz_io.load(tmp_path / "idata.nc")
    assert "posterior" not in idata.groups() and "log_likelihood" not in idata.groups()
    assert idata.attrs["posterior"] == "none" and "point estimate" in idata.attrs["posterior_note"]
    # 40 independent draws stored as 4 chains x 10 draws (ArviZ's default chain count here)
    assert idata.posterior_predictive["y"].shape == (4, 10, 30)
    assert idata.predictions["y_test"].shape == (4, 10, 60)
    with pytest.raises(arviz_io.NoPosteriorError, match="point estimate"):
        arviz_io.loo(idata)
    with pytest.raises(arviz_io.NoPosteriorError, match="point estimate"):
        arviz_io.compare({"a": idata, "b": idata})
    m = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("ece_equal_width", "ece_equal_mass", "mce", "classwise_ece", "aurc", "e_aurc"):
        assert key in m["test"] and key in m["fashion-mnist-c"]
    assert m["ood"]["in_distribution"] == "test"
    assert set(m["ood"]["fashion-mnist-c"]) == {"msp", "entropy"}
    for png in ("reliability", "risk_coverage", "ood_fashion_mnist_c", "ppc"):
        assert (tmp_path / "plots" / f"{png}.png").stat().st_size > 1000


def test_prior_group_from_the_methods_logit_prior(tmp_path):
    class WithPrior(get_method_class("zero-shot")):
        name = "with-prior"

        def logit_prior(self, features, classnames):
            return pyro.distributions.Normal(torch.zeros(len(features), 3), 2.0).to_event(1)

    run = make_run(tmp_path, logit_samples=True, method=WithPrior())
    diagnose_run(run, draws=500)
    idata = arviz_io.load(tmp_path / "idata.nc")
    assert idata.prior["train_margin"].shape == (4, 125, 3)
    assert idata.prior_predictive["y"].shape == (4, 125, 30)
    # symmetric prior: each class's label frequency is 1/3 (binomial sd 0.0037 at 15000 draws)
    freq = np.bincount(idata.prior_predictive["y"].values.ravel(), minlength=3) / 15000
    np.testing.assert_allclose(freq, 1 / 3, atol=0.02)


def test_method_ood_scores_are_added_to_the_built_in_ones(tmp_path):
    class WithScores(get_method_class("zero-shot")):
        name = "scored"

        def ood_scores(self, features, classnames):
            # OOD = the feature norm; the shifted set gets +10 so AUROC is exactly 1
            return {"norm": features.norm(dim=1)}

    run = make_run(tmp_path, logit_samples=True, method=WithScores())
    run.evaluations["fashion-mnist-c"].features += 10
    diagnose_run(run)
    ood = json.loads((tmp_path / "metrics.json").read_text())["ood"]["fashion-mnist-c"]
    assert set(ood) == {"msp", "entropy", "mutual_information", "scored:norm"}
    assert ood["scored:norm"]["auroc"] == pytest.approx(1.0) and ood["scored:norm"]["fpr95"] == 0.0
    assert 0 <= ood["mutual_information"]["auroc"] <= 1 and not math.isnan(ood["msp"]["auroc"])


def test_semantic_ood_is_scored_apart_from_covariate_shift(tmp_path):
    class WithScores:  # the two hooks the diagnostics call (diagnostics.hooks.MethodLike)
        name = "scored"

        def ood_scores(self, features, classnames):
            return {"norm": features.norm(dim=1)}

        def logit_prior(self, features, classnames):
            return None

    run = make_run(tmp_path, logit_samples=False, method=WithScores())
    gen = torch.Generator().manual_seed(3)
    feats = torch.randn(40, 4, generator=gen) + 10  # far from every in-distribution feature
    probs = torch.full((40, 3), 1 / 3, dtype=torch.float64)  # no fitted class fits them
    run.semantic_ood = {"new": Evaluation("new", Prediction(probs, None),
                                          torch.full((40,), -1), CLASSES, features=feats)}
    diagnose_run(run, draws=20)
    m = json.loads((tmp_path / "metrics.json").read_text())
    sem = m["semantic_ood"]
    assert sem["in_distribution"] == "test" and set(m["ood"]) == {"in_distribution",
                                                                  "fashion-mnist-c"}
    assert sem["new"]["scored:norm"]["auroc"] == pytest.approx(1.0)
    # uniform predictions are the most uncertain possible: no ID image scores higher
    assert sem["new"]["entropy"]["auroc"] == pytest.approx(1.0)
    assert sem["new"]["msp"]["fpr95"] == 0.0 and sem["new"]["msp"]["aupr_out"] == 1.0
