"""Corrupt images in file-based data sets: fatal by default with a message naming
``--skip-corrupt``; with the flag (or YAML key) they are skipped and counted in config.json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from pyro_clip.cli import main
from pyro_clip.data import load_dataset
from tests.conftest import TINY


def _png(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, dtype=np.uint8)).save(path)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """root/<split>/<class>/*.png, two classes; one corrupt file in train and one in test."""
    root = tmp_path / "data"
    for split, n in (("train", 3), ("val", 2), ("test", 3)):
        for c, cls in enumerate(("cat", "dog")):
            for i in range(n):
                _png(root / split / cls / f"{i}.png", 40 * c + 10 * i)
    (root / "train" / "dog" / "broken.png").write_bytes(b"\x89PNG not really")
    good = (root / "test" / "cat" / "0.png").read_bytes()
    (root / "test" / "cat" / "truncated.png").write_bytes(good[: len(good) // 2])
    return root


def _args(folder: Path, out: Path, *extra: str) -> list[str]:
    return ["fit", "--method", "zero-shot", "--backbone", TINY, "--dataset", "folder",
            "--data-root", str(folder), "--shots", "1", "--no-eval-datasets", "--no-progress",
            "--out", str(out), *extra]


def test_corrupt_image_is_fatal_and_names_the_flag(folder, tmp_path, capsys):
    assert main(_args(folder, tmp_path / "run")) == 2
    err = capsys.readouterr().err
    # only the run's images are decoded (1 shot, the test split): the truncated test image
    # stops it, with the file named and the flag to pass, in one message (no worker traceback)
    assert "cannot decode image" in err and "truncated.png" in err and "--skip-corrupt" in err
    assert "DataLoader worker" not in err


def test_skip_corrupt_flag_skips_and_reports_counts(folder, tmp_path):
    out = tmp_path / "run"
    with pytest.warns(UserWarning, match="skipped 1 corrupt"):
        assert main(_args(folder, out, "--skip-corrupt")) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["skip_corrupt"] is True
    assert cfg["data_report"] == {
        "folder/train": {"n_images": 6, "n_skipped": 1},
        "folder/val": {"n_images": 4, "n_skipped": 0},
        "folder/test": {"n_images": 6, "n_skipped": 1},  # the truncated file too
    }
    assert json.loads((out / "metrics.json").read_text())["test"]["n"] == 6


def test_skip_corrupt_yaml_key(folder, tmp_path):
    conf = tmp_path / "run.yaml"
    conf.write_text(yaml.safe_dump({"skip_corrupt": True}))
    out = tmp_path / "run"
    with pytest.warns(UserWarning, match="skipped 1 corrupt"):
        assert main(_args(folder, out, "--config", str(conf))) == 0
    assert json.loads((out / "config.json").read_text())["data_report"]["folder/train"] == {
        "n_images": 6, "n_skipped": 1}


def test_embedded_sets_accept_the_option_and_report_zero():
    assert len(load_dataset("fashion-mnist", "test", skip_corrupt=True)) == 1000
