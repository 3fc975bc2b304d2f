"""``pyro-clip fit`` on a user's flat image folder: no test image is one it was fitted to."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import pyro_clip.pipeline.run as runner
from pyro_clip.cli import main
from pyro_clip.utils.io import read_json
from tests.conftest import TINY

CLASSES = ("ant", "bee", "cow")


@pytest.fixture(scope="module")
def flat_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("flat")
    rng = np.random.default_rng(0)
    for cls in CLASSES:
        (root / cls).mkdir()
        for i in range(20):
            pixels = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / cls / f"{i}.png")
    return root


def _paths(images) -> list[Path]:
    """File paths of a split or of a few-shot sample of one."""
    if hasattr(images, "indices"):
        return [images.base.paths[i] for i in images.indices]
    return list(images.paths)


def test_fit_on_flat_folder_never_scores_a_training_image(flat_root, tmp_path, monkeypatch,
                                                           capsys):
    seen: list[runner.RunImages] = []
    real = runner.select_images

    def capture(cfg):
        seen.append(real(cfg))
        return seen[-1]

    monkeypatch.setattr(runner, "select_images", capture)
    out = tmp_path / "run"
    args = ["fit", "--dataset", "folder", "--data-root", str(flat_root), "--backbone", TINY,
            "--method", "linear-probe", "--shots", "16", "--no-progress",
            "--cache-dir", str(tmp_path / "cache")]
    with pytest.warns(UserWarning, match="fewer than 16 examples"):
        assert main([*args, "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "flat class folders, split per class by seed 1" in err and "split.json" in err
    images = seen[0]
    fitted = set(_paths(images.train)) | set(_paths(images.val))
    scored = set(_paths(images.test))
    assert len(scored) == 3 * 6 and not fitted & scored
    assert not ({hashlib.sha256(p.read_bytes()).hexdigest() for p in fitted}
                & {hashlib.sha256(p.read_bytes()).hexdigest() for p in scored})
    predictions = np.load(out / "predictions.npz")
    assert predictions["test/labels"].shape == (18,)
    assert predictions["test/probs"].shape == (18, 3)
    split = read_json(out / "split.json")
    assert sorted(flat_root / rel for rel, _, _ in split["test"]) == sorted(scored)

    # the recorded split file reproduces the same test set
    again = tmp_path / "again"
    with pytest.warns(UserWarning, match="fewer than 16 examples"):
        assert main([*args, "--out", str(again), "--split-file", str(out / "split.json")]) == 0
    assert set(_paths(seen[1].test)) == scored


def test_one_class_folder_is_a_one_line_error(tmp_path, capsys):
    for i in range(4):
        path = tmp_path / "data" / "only" / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((4, 4), 40 * i, dtype=np.uint8)).save(path)
    rc = main(["fit", "--dataset", "folder", "--data-root", str(tmp_path / "data"),
               "--backbone", TINY,
               "--method", "zero-shot", "--out", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("pyro-clip: error: ") and err.count("\n") == 1
    assert "classification needs at least two classes" in err


def test_class_missing_from_test_is_scored_over_every_fitted_class(tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / "data"
    for split, classes, n in (("train", CLASSES, 5), ("test", ("ant", "cow"), 3)):
        for cls in classes:
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / cls / f"{i}.png")
    out = tmp_path / "run"
    with pytest.warns(UserWarning, match=r"no images of class\(es\) \['bee'\].*all 3 classes"):
        assert main(["fit", "--dataset", "folder", "--data-root", str(root), "--backbone", TINY,
                     "--method", "zero-shot", "--shots", "2", "--out", str(out),
                     "--no-progress", "--cache-dir", str(tmp_path / "cache")]) == 0
    predictions = np.load(out / "predictions.npz")
    assert predictions["test/probs"].shape == (6, 3)  # 3-way, not 2-way
    assert sorted(set(predictions["test/labels"].tolist())) == [0, 2]


def test_list_datasets_says_how_folders_are_read(capsys):
    assert main(["list", "datasets"]) == 0
    folder = next(line for line in capsys.readouterr().out.splitlines()
                  if line.startswith("folder:"))
    for layout in ("ROOT/<class>/<images>", "ROOT/train/ + ROOT/test/", "ROOT/val/",
                   "--split-file", "50% train, 20% val"):
        assert layout in folder
