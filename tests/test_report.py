"""``pyro-clip report``: self-contained HTML, rendered in headless Chromium."""

import base64
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from pyro_clip.diagnostics.hooks import diagnose_run
from pyro_clip.errors import DataError
from pyro_clip.reporting.html import write_report
from pyro_clip.utils.io import save_npz
from tests.test_diagnostics_hook import make_run

CHROMIUM = Path("/usr/bin/chromium")
DRIVER = Path("/usr/bin/chromedriver")


def _run_folder(path, logit_samples, seed):
    run = make_run(path, logit_samples=logit_samples, seed=seed)
    ev = run.evaluations["test"]
    save_npz(path / "predictions.npz", **{"test/probs": ev.prediction.probs.float().numpy(),
                                          "test/labels": ev.labels.numpy()})
    diagnose_run(run, draws=20)
    return path


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    base = tmp_path_factory.mktemp("report")
    runs = [_run_folder(base / "bayes", True, 0), _run_folder(base / "point", False, 1)]
    return write_report(runs, base / "out"), runs


def test_report_is_self_contained_with_pngs(report):
    path, runs = report
    text = path.read_text()
    assert path.name == "report.html"
    assert "<table>" in text and "ECE (mass)" in text and "AUROC %" in text
    assert text.count("<section") == len(runs) and "95% CI" in text
    assert "shots per class" in text and "seed" in text and "protocol" in text
    assert "0.5" not in re.findall(r"<td>(0\.\d+)</td>", text)  # AUROC never as a fraction
    assert "src=\"http" not in text and "src='http" not in text
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', text)
    assert len(images) == 1 + 4 * len(runs)  # comparison + 4 figures per run
    assert all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in images)
    out = path.parent
    assert (out / "compare_risk_coverage.png").exists() and (out / "report.md").exists()
    assert len(list(out.glob("runs/*/*.png"))) == 4 * len(runs)


def test_report_rejects_folders_without_metrics(tmp_path):
    with pytest.raises(DataError, match="not run folders"):
        write_report([tmp_path / "nope"], tmp_path / "out")


def _ensure_chromium() -> str | None:
    """Install Debian's chromium + chromium-driver when missing; reason string if impossible."""
    if CHROMIUM.exists() and DRIVER.exists():
        return None
    if shutil.which("apt-get") is None:
        return "apt-get not available to install chromium/chromium-driver"
    env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    for cmd in (["apt-get", "update", "-qq"],
                ["apt-get", "install", "-y", "-qq", "chromium", "chromium-driver"]):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            return f"could not install chromium ({' '.join(cmd)}): {proc.stderr.strip()[-300:]}"
    return None if CHROMIUM.exists() and DRIVER.exists() else "chromium not found after install"


def test_report_renders_in_headless_chromium(report, tmp_path):
    reason = _ensure_chromium()
    if reason:
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--window-size=1400,1000", "--no-sandbox", "--disable-gpu",
                 "--disable-quic",
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
        widths = driver.execute_script(
            "return Array.from(document.images).map(i => i.complete ? i.naturalWidth : 0)")
        assert len(widths) == 1 + 4 * len(runs) and all(w > 0 for w in widths)
        n_tables = driver.execute_script("return document.querySelectorAll('table').length")
        assert n_tables >= 2
        # per-run figures are shown large (not thumbnails) and link to the full-size PNG
        shown = driver.execute_script(
            "return Array.from(document.querySelectorAll('section img')).map(i => i.width)")
        assert len(shown) == 4 * len(runs) and min(shown) >= 300
        links = driver.execute_script(
            "return Array.from(document.querySelectorAll('section a')).map(a => a.href)")
        assert all(link.endswith(".png") for link in links) and len(links) == len(shown)
        out = Path(os.environ.get("PYRO_CLIP_SCREENSHOT_DIR", tmp_path))
        out.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(out / "report_top.png"))
        driver.execute_script("document.getElementById('run-0').scrollIntoView()")
        driver.save_screenshot(str(out / "report_run0.png"))
        cells = driver.execute_script(
            "return document.querySelector('table tbody').rows.length")
        assert cells == len(runs)
    finally:
        driver.quit()
