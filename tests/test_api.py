"""The public API (``import pyro_clip as pc``): the README snippet, every docstring example,
fitting from tensors without a backbone, option errors, run folders and precision."""

from __future__ import annotations

import doctest
import importlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import pyro_clip as pc
from pyro_clip.cli import main
from pyro_clip.errors import ConfigError, DataError
from tests.conftest import TINY

README = Path(__file__).resolve().parents[1] / "README.md"
NAMES = ["cat", "dog", "car", "tree"]
WEIGHT_SPACE = ["kalman", "laplace", "linear-probe", "tip-adapter", "tip-adapter-f",
                "clip-adapter", "zero-shot"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A folder holding ``runs/demo/kalman``: a CLI kalman run fitted in bf16 (tiny backbone)."""
    root = tmp_path_factory.mktemp("api")
    code = main(["fit", "--method", "kalman", "--backbone", TINY, "--shots", "1",
                 "--no-eval-datasets", "--no-progress", "--device", "cpu", "--precision",
                 "bf16", "--opt", "covariance=diag", "--out", str(root / "runs/demo/kalman")])
    assert code == 0
    return root


def _tensors(n_per_class=6, seed=0, names=NAMES):
    """Clusters around class embeddings ``text``: (x, y, text), float64."""
    gen = torch.Generator().manual_seed(seed)
    text = F.normalize(torch.randn(len(names), 16, generator=torch.Generator().manual_seed(7),
                                   dtype=torch.float64), dim=-1)
    y = torch.arange(len(names)).repeat(n_per_class)
    x = text[y] + 0.4 * torch.randn(len(y), 16, generator=gen, dtype=torch.float64)
    return x, y, text


def test_readme_snippet_runs(workdir, monkeypatch):
    text = README.read_text()
    section = text[text.index("## Python API"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert "pc.fit(\"kalman\", feats, val=None, backbone=backbone" in code
    monkeypatch.chdir(workdir)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # the documented snippet, as written
    probs, post = scope["probs"], scope["post"]
    assert probs.shape == (50, 10)
    torch.testing.assert_close(probs.sum(1), torch.ones(50))
    assert post.mean.shape == post.variance.shape == (10, scope["feats"].x.shape[1] + 1)
    assert set(scope["result"].metrics["test"]) >= {"accuracy", "ece", "nll", "ppc"}
    assert "log_likelihood" in scope["result"].idata.groups()
    assert isinstance(scope["run"], pc.FittedModel) and scope["run"].name == "kalman"
    assert (workdir / "report" / "report.html").exists()


@pytest.mark.parametrize("module", ["pyro_clip", "pyro_clip.types", "pyro_clip.api.loading",
                                    "pyro_clip.api.model", "pyro_clip.api.evaluation",
                                    "pyro_clip.api.runs", "pyro_clip.api.text_encoder"])
def test_docstring_examples(module, workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    result = doctest.testmod(importlib.import_module(module), raise_on_error=False,
                             optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted > 0


def test_every_public_name_is_documented_with_an_example():
    for name in pc.__all__:
        doc = getattr(pc, name).__doc__ or ""
        assert ">>>" in doc, f"pc.{name} has no example"


def test_features_from_tensors_and_clear_errors():
    x, y, text = _tensors()
    f = pc.Features(x.numpy(), y.numpy(), NAMES, text=text)
    assert f.x.dtype == torch.float64 and f.y.dtype == torch.long and f.text.shape == (4, 16)
    sub = f.restrict_classes([2, 0])
    assert sub.classnames == ["car", "cat"]
    torch.testing.assert_close(sub.text, text[[2, 0]])
    with pytest.raises(DataError, match=r"is outside 0\.\.3 for its 4 class names"):
        pc.Features(x, y + 1, NAMES)
    with pytest.raises(DataError, match=r"have shape \(5, 16\) but there are 24 labels"):
        pc.Features(x[:5], y, NAMES)
    with pytest.raises(DataError, match="one row per class name"):
        pc.Features(x, y, NAMES, text=text[:3])
    with pytest.raises(DataError, match=r"text=\.\.\."):
        pc.Features(x, y, NAMES, text)  # positional text would land in `name`
    with pytest.raises(DataError, match="unique"):
        pc.Features(x, y, ["a", "a", "b", "c"])


@pytest.mark.parametrize("method", WEIGHT_SPACE)
def test_weight_space_methods_fit_without_a_backbone(method):
    x, y, text = _tensors()
    train = pc.Features(x, y, NAMES, text=text)
    val = pc.Features(*_tensors(2, seed=1)[:2], NAMES, text=text)
    opts = {"epochs": 2} if method in ("clip-adapter", "tip-adapter-f") else {}
    model = pc.fit(method, train, val, seed=1, **opts)
    test = pc.Features(*_tensors(5, seed=2)[:2], NAMES, text=text)
    probs = model.predict(test)
    assert probs.shape == (20, 4)
    torch.testing.assert_close(probs.sum(1), torch.ones(20))
    if method == "zero-shot":  # softmax(100 cos(x, t_c)), written out
        ref = torch.softmax(100 * F.normalize(test.x, dim=-1) @ text.T, -1)
        torch.testing.assert_close(probs.double(), ref, rtol=1e-5, atol=1e-6)
    else:  # learned something beyond the prior on well-separated clusters
        assert (probs.argmax(1) == test.y).float().mean() >= 0.9


def test_new_classes_predict_from_their_text():
    x, y, text = _tensors()
    model = pc.fit("kalman", pc.Features(x[y < 2], y[y < 2], NAMES[:2], text=text[:2]),
                   covariance="block", prior_var=1.0)
    test = pc.Features(*_tensors(3, seed=4)[:2], NAMES, text=text)
    assert model.predict(test).shape == (12, 4)
    with pytest.raises(DataError, match="no text embedding for class"):
        model.predict(test.x, classnames=["ship"])


def test_ood_scores_are_the_reports_scores_of_one_prediction():
    x, y, text = _tensors()
    model = pc.fit("kalman", pc.Features(x, y, NAMES, text=text), covariance="block",
                   prior_var=1.0, mc_samples=64)
    test = pc.Features(*_tensors(3, seed=4)[:2], NAMES, text=text)
    scores = model.ood_scores(test)
    assert set(scores) == {"msp", "entropy", "mutual_information", "kalman:mahalanobis"}
    pred = model.predictive(test)
    p = pred.probs.double()  # H(p) and -max p of the same predictive, written out
    torch.testing.assert_close(scores["entropy"], -torch.special.xlogy(p, p).sum(1))
    torch.testing.assert_close(scores["msp"], -p.max(1).values)
    torch.testing.assert_close(scores["mutual_information"],
                               pred.mutual_information.double())
    assert set(pc.fit("linear-probe", pc.Features(x, y, NAMES, text=text), lam=1.0)
               .ood_scores(test)) == {"msp", "entropy"}


def test_option_and_backbone_errors():
    x, y, text = _tensors()
    feats = pc.Features(x, y, NAMES, text=text)
    with pytest.raises(ConfigError, match=r"no option\(s\) \['covarianse'\].*covariance"):
        pc.fit("kalman", feats, covarianse="block")
    with pytest.raises(ConfigError, match=r"kalman: covariance.*'bad'"):
        pc.fit("kalman", feats, covariance="bad")
    with pytest.raises(ConfigError, match="unknown method 'kalmann'"):
        pc.fit("kalmann", feats)
    with pytest.raises(ConfigError, match="needs a backbone"):
        pc.fit("coop", feats)
    with pytest.raises(ConfigError, match=r"backbone=pyro_clip\.load_backbone"):
        pc.fit("kalman", pc.Features(x, y, NAMES))
    with pytest.raises(ConfigError, match="augment='none'"):
        pc.fit("tip-adapter", feats, augment="flip")
    with pytest.raises(DataError, match="validation split is empty"):
        pc.fit("linear-probe", feats)  # val=None and a lam grid to search
    with pytest.raises(ConfigError, match="has no update"):
        pc.fit("zero-shot", feats).update(feats)


@pytest.mark.skipif(not hasattr(importlib.import_module("pyro_clip.methods.kalman")
                                .KalmanAdapter, "update"),
                    reason="the kalman method has no update/acquisition on this branch")
def test_sequential_capabilities_are_delegated():
    x, y, text = _tensors()
    feats = pc.Features(x, y, NAMES, text=text)
    a = pc.fit("kalman", feats, covariance="block", prior_var=1.0)
    b = pc.fit("kalman", feats, covariance="block", prior_var=1.0)
    more = pc.Features(*_tensors(2, seed=9)[:2], NAMES, text=text)
    a.update(more)
    b.method.update(more)
    torch.testing.assert_close(a.posterior().mean, b.posterior().mean, rtol=0, atol=0)
    torch.testing.assert_close(a.acquisition(more, score="entropy"),
                               b.method.acquisition(more.x, score="entropy"), rtol=0, atol=0)


def test_encode_and_fit_on_a_data_set(workdir):
    backbone = pc.load_backbone(TINY, device="cpu")
    train = pc.encode(backbone, pc.load_dataset("fashion-mnist", "train", shots=2, seed=3))
    assert len(train) == 20 and np.bincount(train.y.numpy()).tolist() == [2] * 10
    assert train.images is not None
    model = pc.fit("tip-adapter", train, train, backbone=backbone, alpha=1.0, beta=1.0)
    assert model.options["augment"] == "none"  # the embedded data set's default, as the CLI
    result = pc.evaluate(model, train, shifted={"again": train})
    assert result.metrics["ood"]["again"]["msp"]["auroc"] == pytest.approx(0.5)
    assert result.probs["test"].shape == (20, 10)


def test_load_run_of_a_bf16_run_in_fp32(workdir):
    run_dir = workdir / "runs/demo/kalman"
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["runtime"]["precision"] == "bf16"
    bf16 = pc.load_run(run_dir, device="cpu", precision="bf16")
    fp32 = pc.load_run(run_dir, device="cpu")
    assert fp32.encoder.runtime.precision == "fp32" and bf16.encoder.runtime.precision == "bf16"
    test = pc.load_dataset("fashion-mnist", "test")
    saved = np.load(run_dir / "predictions.npz")["test/probs"]
    probs = bf16.predict(pc.encode(bf16.encoder, test))  # the run's own features (cached)
    np.testing.assert_allclose(probs.numpy(), saved, rtol=1e-5, atol=1e-6)
    probs32 = fp32.predict(pc.encode(fp32.encoder, test))
    torch.testing.assert_close(probs32.sum(1), torch.ones(len(test)))
    assert (probs32.argmax(1).numpy() == saved.argmax(1)).mean() > 0.9
    assert main(["evaluate", str(run_dir), "--dataset", "fashion-mnist", "--device", "cpu",
                 "--out", str(workdir / "eval32")]) == 0
    ev = json.loads((workdir / "eval32" / "config.json").read_text())
    assert ev["evaluation_runtime"]["precision"] == "fp32"


def test_old_runs_fail_with_a_rerun_message(workdir, tmp_path):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(workdir / "runs/demo/kalman", old)
    ckpt = torch.load(old / "checkpoint.pt", weights_only=False)
    ckpt["backbone_fingerprint"] = "an older fingerprint with the precision in it"
    torch.save(ckpt, old / "checkpoint.pt")
    with pytest.raises(DataError, match="re-run it with pyro-clip fit"):
        pc.load_run(old, device="cpu")
    del ckpt["state"]["cov"]
    ckpt["backbone_fingerprint"] = pc.load_backbone(TINY, device="cpu").fingerprint()
    torch.save(ckpt, old / "checkpoint.pt")
    with pytest.raises(DataError, match="re-run it with pyro-clip fit"):
        pc.load_run(old, device="cpu")
    with pytest.raises(DataError, match="not a run folder"):
        pc.load_run(tmp_path / "nothing")


def test_precision_is_not_identity_and_never_mutates_a_backbone():
    from pyro_clip.features.cache import FeatureCache

    bf16 = pc.load_backbone(TINY, device="cpu", precision="bf16")
    fp32 = pc.load_backbone(TINY, device="cpu", precision="fp32")
    assert bf16.runtime.precision == "bf16"  # unchanged by the later call
    assert bf16.fingerprint() == fp32.fingerprint()
    assert bf16.feature_fingerprint() != fp32.feature_fingerprint()
    assert fp32.feature_fingerprint() == fp32.fingerprint()
    cache = FeatureCache()
    assert cache.backbone_dir(bf16) != cache.backbone_dir(fp32)
    shared = {p.data_ptr() for p in bf16.parameters()}
    assert shared == {p.data_ptr() for p in fp32.parameters()}  # one set of weights


def test_report_takes_a_folder_of_runs(workdir, tmp_path):
    path = pc.report(workdir / "runs/demo", out=tmp_path / "rep")
    assert path == tmp_path / "rep" / "report.html" and "kalman" in path.read_text()
    with pytest.raises(DataError, match="not run folders"):
        pc.report([tmp_path / "empty"], out=tmp_path / "rep2")
