"""The run hook on hand-built runs: idata.nc groups, merged metrics and plots."""

import json
import math

import numpy as np
import pytest
import torch

from pyro_clip.config import RunConfig
from pyro_clip.diagnostics import arviz_io
from pyro_clip.diagnostics.hooks import diagnose_run
from pyro_clip.methods import Prediction, create_method
from pyro_clip.metrics import classification_metrics
from pyro_clip.runner import RUN_HOOKS, Evaluation, RunResult

CLASSES = ["a", "b", "c"]


def make_run(tmp_path, logit_samples: bool, method=None, n=60, s=8, seed=0):
    """Two evaluation sets (test + a shifted set) with known predictions."""
    gen = torch.Generator().manual_seed(seed)
    evs = {}
    for name, scale in (("test", 3.0), ("fashion-mnist-c", 0.5)):
        labels = torch.randint(0, 3, (n,), generator=gen)
        mean = torch.nn.functional.one_hot(labels, 3).double() * scale
        samples = mean + torch.randn(s, n, 3, generator=gen, dtype=torch.float64)
        probs = samples.softmax(-1).mean(0)
        pred = Prediction(probs, samples if logit_samples else None)
        feats = torch.randn(n, 4, generator=gen)
        evs[name] = Evaluation(name, pred, labels, CLASSES, classification_metrics(probs, labels),
                               features=feats)
    cfg = RunConfig(method="zero-shot", out=str(tmp_path), seed=5)
    method = method or create_method("zero-shot")
    metrics = {k: ev.metrics for k, ev in evs.items()}
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "config.json").write_text(json.dumps({**cfg.to_dict()}))
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    return RunResult(cfg, method, evs, metrics, tmp_path)


def test_hook_is_registered():
    assert diagnose_run in RUN_HOOKS


def test_idata_with_posterior_samples(tmp_path):
    run = make_run(tmp_path, logit_samples=True)
    diagnose_run(run)
    idata = arviz_io.load(tmp_path / "idata.nc")
    ev = run.evaluations["test"]
    logits = idata.posterior["logits_test"].values  # (chain, draw, obs, class)
    assert logits.shape == (1, 8, 60, 3)
    np.testing.assert_allclose(logits[0], ev.prediction.logit_samples.numpy(), rtol=1e-6)
    # pointwise log-likelihood = log softmax of each sample at the observed label (by hand)
    ll = idata.log_likelihood["y_test"].values[0]
    s = ev.prediction.logit_samples.numpy()
    y = ev.labels.numpy()
    by_hand = s[:, np.arange(60), y] - np.log(np.exp(s).sum(-1))
    np.testing.assert_allclose(ll, by_hand, rtol=1e-6)
    np.testing.assert_array_equal(idata.observed_data["y_test"].values, y)
    pp = idata.posterior_predictive["y_fashion_mnist_c"].values
    assert pp.shape == (1, 8, 60) and set(np.unique(pp)) <= {0, 1, 2}
    sets = arviz_io.evaluation_sets(idata)
    assert sets["fashion_mnist_c"] == {"name": "fashion-mnist-c", "classnames": CLASSES}


def test_idata_without_posterior_and_merged_metrics(tmp_path):
    run = make_run(tmp_path, logit_samples=False)
    diagnose_run(run, draws=40)
    idata = arviz_io.load(tmp_path / "idata.nc")
    assert "posterior" not in idata.groups()
    assert idata.posterior_predictive["y_test"].shape == (1, 40, 60)
    probs, y = run.evaluations["test"].prediction.probs, run.evaluations["test"].labels
    ll = idata.log_likelihood["y_test"].values[0]
    np.testing.assert_allclose(ll, np.broadcast_to(np.log(probs[range(60), y]), (40, 60)))
    m = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("ece_equal_width", "ece_equal_mass", "mce", "classwise_ece", "aurc", "e_aurc"):
        assert key in m["test"] and key in m["fashion-mnist-c"]
    assert m["ood"]["in_distribution"] == "test"
    assert set(m["ood"]["fashion-mnist-c"]) == {"msp", "entropy"}
    for png in ("reliability", "risk_coverage", "ood_fashion_mnist_c", "ppc"):
        assert (tmp_path / "plots" / f"{png}.png").stat().st_size > 1000


def test_method_ood_scores_are_used_by_duck_typing(tmp_path):
    class WithScores:
        name = "scored"

        def ood_scores(self, features, classnames):
            # OOD = the feature norm; the shifted set gets +10 so AUROC is exactly 1
            return {"norm": features.norm(dim=1)}

    run = make_run(tmp_path, logit_samples=True, method=WithScores())
    run.evaluations["fashion-mnist-c"].features += 10
    diagnose_run(run)
    ood = json.loads((tmp_path / "metrics.json").read_text())["ood"]["fashion-mnist-c"]
    assert set(ood) == {"msp", "entropy", "mutual_information", "norm"}
    assert ood["norm"]["auroc"] == pytest.approx(1.0) and ood["norm"]["fpr95"] == 0.0
    assert 0 <= ood["mutual_information"]["auroc"] <= 1 and not math.isnan(ood["msp"]["auroc"])
