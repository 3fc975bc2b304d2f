"""``pyro-clip report``: self-contained HTML, rendered in headless Chromium."""

import base64
import dataclasses
import json
import os
import re
from pathlib import Path

import pytest
import torch

from pyro_clip.diagnostics.hooks import diagnose_run
from pyro_clip.diagnostics.metrics import classification_metrics
from pyro_clip.errors import DataError
from pyro_clip.methods import Prediction
from pyro_clip.pipeline.run import Evaluation
from pyro_clip.reporting.html import write_report
from pyro_clip.utils.io import save_npz
from tests.test_diagnostics_hook import make_run

CHROMIUM = Path("/usr/bin/chromium")
DRIVER = Path("/usr/bin/chromedriver")


SEVERITIES = ("fashion-mnist-c:severity=1", "fashion-mnist-c", "fashion-mnist-c:severity=5")


def _run_folder(path, logit_samples, seed, options=None):
    """A hand-built run: test, three fashion-mnist-c severities (accuracy falling with
    severity), and the new classes as semantic OOD."""
    run = make_run(path, logit_samples=logit_samples, seed=seed)
    shifted = run.evaluations["fashion-mnist-c"]
    for k, name in enumerate(SEVERITIES):
        ev = run.evaluations.pop(name, shifted)
        probs = (ev.prediction.probs * (1 - 0.2 * k) + 0.2 * k / 3)
        probs = probs / probs.sum(-1, keepdim=True)
        pred = Prediction(probs, ev.prediction.logit_samples)
        run.evaluations[name] = Evaluation(name, pred, ev.labels, ev.classnames,
                                           classification_metrics(probs, ev.labels),
                                           features=ev.features)
        run.metrics[name] = run.evaluations[name].metrics
    run.config = dataclasses.replace(run.config, eval_datasets=list(SEVERITIES),
                                     options=options or {})
    new = run.evaluations["fashion-mnist-c:severity=5"]
    run.semantic_ood = {"new": Evaluation("new", new.prediction, torch.full_like(new.labels, -1),
                                          new.classnames, features=new.features)}
    cfg = {**run.config.to_dict(), "resolved_options": options or {}, "n_train": 30}
    (path / "config.json").write_text(json.dumps(cfg))
    ev = run.evaluations["test"]
    save_npz(path / "predictions.npz", **{"test/probs": ev.prediction.probs.float().numpy(),
                                          "test/labels": ev.labels.numpy()})
    diagnose_run(run, draws=20)
    return path


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    base = tmp_path_factory.mktemp("report")
    runs = [_run_folder(base / "bayes", True, 0), _run_folder(base / "point", False, 1),
            _run_folder(base / "bayes-b", True, 0, {"temperature": 2.0})]
    return write_report(runs, base / "out"), runs


#: per run: reliability, risk-coverage, one OOD figure per shifted set, PPC
PER_RUN = 3 + len(SEVERITIES)
#: one group: risk-coverage comparison and robustness curve
SHARED = 2


def test_report_is_self_contained_with_pngs(report):
    path, runs = report
    text = path.read_text()
    assert path.name == "report.html"
    assert "<table>" in text and "ECE (mass)" in text and "AUROC %" in text
    assert text.count('<section class="run"') == len(runs) and "95% CI" in text
    assert "shots per class" in text and "seed" in text and "protocol" in text
    assert "0.5" not in re.findall(r"<td>(0\.\d+)</td>", text)  # AUROC never as a fraction
    assert "src=\"http" not in text and "src='http" not in text
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', text)
    assert len(images) == SHARED + PER_RUN * len(runs)
    assert all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in images)
    out = path.parent
    assert len(list(out.glob("compare_risk_coverage_*.png"))) == 1 and (out / "report.md").exists()
    assert len(list(out.glob("robustness_*.png"))) == 1
    assert len(list(out.glob("runs/*/*.png"))) == PER_RUN * len(runs)


def test_report_rows_say_what_each_run_is(report):
    path, _ = report
    text = path.read_text()
    # contents, one group title (data set, protocol, shots), option diffs, OOD kinds
    assert 'id="contents"' in text and text.count('href="#run-') >= 3
    assert "fashion-mnist · few-shot · 16 shots" in text
    assert "zero-shot [temperature=2]" in text and "defaults" in text
    assert "covariate shift" in text and "semantic (new classes)" in text
    for title in ("AUPR-in %", "AUPR-out %", "FPR@95TPR %"):
        assert title in text
    assert "max prob. (MSP)" in text and "Robustness to corruption severity" in text
    # az.compare over the two Bayesian runs fitted to the same data; the point estimate left out
    assert "elpd LOO" in text and "point estimate" in text


def test_folder_runs_of_different_roots_are_told_apart(tmp_path):
    from pyro_clip.reporting.gather import group_runs, read_runs

    paths = []
    for root in ("/data/pets", "/data/cars"):
        run = tmp_path / root.rsplit("/", 1)[1]
        run.mkdir()
        (run / "config.json").write_text(json.dumps({"method": "zero-shot", "dataset": "folder",
                                                     "data_root": root, "protocol": "few-shot",
                                                     "shots": 4, "seed": 1}))
        (run / "metrics.json").write_text(json.dumps({"test": {"accuracy": 0.5}}))
        paths.append(run)
    runs = read_runs(paths)
    assert [r.dataset for r in runs] == ["folder (/data/pets)", "folder (/data/cars)"]
    assert len(group_runs(runs)) == 2
    text = write_report(paths, tmp_path / "out").read_text()
    assert "folder (/data/pets) · few-shot · 4 shots" in text
    assert "folder (/data/cars) · few-shot · 4 shots" in text


def test_report_rejects_folders_without_metrics(tmp_path):
    with pytest.raises(DataError, match="not run folders"):
        write_report([tmp_path / "nope"], tmp_path / "out")


def _browser_missing() -> str | None:
    """Why the browser test cannot run here (None when it can): CI installs Debian's
    ``chromium`` and ``chromium-driver`` (``apt-get install chromium chromium-driver``)."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e .[test])"
    missing = [str(p) for p in (CHROMIUM, DRIVER) if not p.exists()]
    if missing:
        return (f"no headless browser: {', '.join(missing)} missing; install with "
                "'apt-get install chromium chromium-driver'")
    return None


#: the laptop width every figure must read at, and the narrowest a figure may be drawn
LAPTOP_PX = 1280
MIN_FIGURE_PX = 400


def test_report_renders_in_headless_chromium(report, tmp_path):
    reason = _browser_missing()
    if reason:
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for flag in ("--headless", f"--window-size={LAPTOP_PX},900", "--no-sandbox",
                 "--disable-gpu", "--disable-quic", "--hide-scrollbars",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'profile'}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(DRIVER)), options=opts)
    try:
        path, runs = report
        driver.get(path.resolve().as_uri())
        assert driver.title == "pyro-clip report"
        assert driver.execute_script("return document.readyState") == "complete"
        assert driver.execute_script("return window.innerWidth") == LAPTOP_PX
        images = driver.execute_script(
            "return Array.from(document.images).map(i => ({alt: i.alt, natural: i.complete ? "
            "i.naturalWidth : 0, shown: i.getBoundingClientRect().width}))")
        assert len(images) == SHARED + PER_RUN * len(runs)
        broken = [i["alt"] for i in images if i["natural"] == 0]
        assert not broken, f"images missing or not decodable: {broken}"
        narrow = [(i["alt"], round(i["shown"])) for i in images if i["shown"] < MIN_FIGURE_PX]
        assert not narrow, f"figures drawn narrower than {MIN_FIGURE_PX} px: {narrow}"
        # nothing is wider than the window (no sideways scrolling of the page)
        assert driver.execute_script(
            "return document.documentElement.scrollWidth") <= LAPTOP_PX
        links = driver.execute_script(
            "return Array.from(document.querySelectorAll('section figure a')).map(a => a.href)")
        assert all(link.endswith(".png") for link in links)
        assert len(links) == PER_RUN * len(runs)
        toc = driver.execute_script(
            "return Array.from(document.querySelectorAll('nav.toc a')).map(a => "
            "document.getElementById(a.getAttribute('href').slice(1)) !== null)")
        assert toc and all(toc), "a contents link points at no section"
        out = Path(os.environ.get("PYRO_CLIP_SCREENSHOT_DIR", tmp_path))
        out.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(out / "report_top.png"))
        driver.execute_script("document.getElementById('run-0').scrollIntoView()")
        driver.save_screenshot(str(out / "report_run0.png"))
    finally:
        driver.quit()


def test_bootstrap_intervals_match_metrics_of_each_resample():
    """The vectorised bootstrap equals the library metrics (torchmetrics' ECE, NLL, Brier)
    evaluated on each resample one by one."""
    import numpy as np

    from pyro_clip.diagnostics.calibration import ece_equal_mass
    from pyro_clip.diagnostics.metrics import (
        brier_score,
        expected_calibration_error,
        negative_log_likelihood,
    )
    from pyro_clip.reporting.html import bootstrap_calibration

    gen = torch.Generator().manual_seed(4)
    probs = (torch.randn(150, 4, generator=gen, dtype=torch.float64) * 2).softmax(-1)
    probs[:3] = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64)  # confidence exactly 1
    labels = torch.randint(0, 4, (150,), generator=gen)
    got = bootstrap_calibration(probs, labels, n=40, seed=2)
    idx = torch.randint(0, 150, (40, 150), generator=torch.Generator().manual_seed(2))
    fns = {"ECE (width)": expected_calibration_error, "ECE (mass)": ece_equal_mass,
           "NLL": negative_log_likelihood, "Brier": brier_score}
    for name, fn in fns.items():
        reps = np.array([fn(probs[i], labels[i]) for i in idx])
        lo, hi = np.percentile(reps, [2.5, 97.5])
        # torchmetrics computes the equal-width ECE in float32
        assert got[name] == pytest.approx((fn(probs, labels), lo, hi), rel=1e-6, abs=1e-9)


def test_ppc_section_marks_each_check_pass_or_fail(tmp_path):
    """The held-out PPC table: a calibrated run passes, a mis-specified one fails, side by side;
    accuracy and log score fail on either side, the discrepancies only below 0.01."""
    from pyro_clip.reporting.gather import ppc_row, read_runs

    ppcs = {"default": {"p_accuracy": 0.62, "p_log_score": 0.40, "p_class_frequency": 1.0,
                        "p_calibration": 0.995, "p_recall_min_two_sided": 0.2},
            "mis-specified": {"p_accuracy": 1.0, "p_log_score": 0.004,
                              "p_class_frequency": 0.0, "p_calibration": 0.005,
                              "p_recall_min_two_sided": 0.001}}
    paths = []
    for name, ppc in ppcs.items():
        run = tmp_path / name
        run.mkdir()
        options = {} if name == "default" else {"prior_var": 10000.0}
        (run / "config.json").write_text(json.dumps(
            {"method": "kalman", "dataset": "fashion-mnist", "protocol": "few-shot",
             "shots": 16, "seed": 1, "options": options, "resolved_options": options}))
        (run / "metrics.json").write_text(json.dumps(
            {"test": {"accuracy": 0.6, "ppc": {"data": "held-out", **ppc}}}))
        paths.append(run)
    rows = {r.path.name: ppc_row(r) for r in read_runs(paths)}
    verdicts = {k: [c["verdict"] for c in v["cells"]] for k, v in rows.items()}
    assert verdicts["default"] == ["pass"] * 5
    assert verdicts["mis-specified"] == ["fail"] * 5
    assert rows["default"]["set"] == "test" and rows["default"]["data"] == "held-out"
    text = write_report(paths, tmp_path / "out").read_text()
    section = text[text.index('id="ppc"'):text.index('id="ood"')]
    assert section.count('<td class="pass">') == 5 and section.count('<td class="fail">') == 5
    assert "prior_var=10000" in section and "0.004" in section
    assert 'href="#ppc"' in text
