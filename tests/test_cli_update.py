"""``pyro-clip update``: a fitted kalman run filtered over more labelled images, new folder."""

from __future__ import annotations

import hashlib
import json

import torch

from pyro_clip.cli import main
from pyro_clip.pipeline.run import load_trained_method
from tests.conftest import TINY


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_update_writes_a_new_run_and_leaves_the_old_one(tmp_path, capsys):
    run, new = tmp_path / "run", tmp_path / "updated"
    assert main(["fit", "--method", "kalman", "--backbone", TINY, "--shots", "1",
                 "--opt", "covariance=block", "--opt", "prior_var=10",
                 "--no-progress", "--no-eval-datasets", "--out", str(run)]) == 0
    before = _digest(run)
    assert main(["update", str(run), "--dataset", "fashion-mnist", "--shots", "1",
                 "--seed", "7", "--out", str(new)]) == 0
    assert "filtered" in capsys.readouterr().out
    assert _digest(run) == before  # the old run is untouched
    cfg = json.loads((new / "config.json").read_text())
    assert cfg["updated_from"] == str(run) and cfg["update"]["n_images"] <= 10
    keys = json.loads((new / "labelled_keys.json").read_text())
    assert len(keys) == len(set(keys)) == cfg["n_train"] == 10 + cfg["update"]["n_images"]
    assert json.loads((new / "metrics.json").read_text())["test"]["n"] == 1000
    old_m, new_m = load_trained_method(run), load_trained_method(new)
    assert new_m.n_updates == 1 and old_m.n_updates == 0
    assert not torch.equal(new_m.state.mean, old_m.state.mean)
    # the same draw again: every image already labelled -> one clear error, nothing written
    again = tmp_path / "again"
    assert main(["update", str(new), "--dataset", "fashion-mnist", "--shots", "1", "--seed",
                 "7", "--out", str(again)]) == 2
    assert "already labelled" in capsys.readouterr().err
    assert main(["update", str(new), "--dataset", "fashion-mnist", "--out", str(new)]) == 2
    assert "kept as it is" in capsys.readouterr().err


def test_update_refuses_a_method_without_a_filter(tmp_path, capsys):
    run = tmp_path / "zs"
    assert main(["fit", "--method", "zero-shot", "--backbone", TINY, "--shots", "1",
                 "--no-progress", "--no-eval-datasets", "--out", str(run)]) == 0
    assert main(["update", str(run), "--dataset", "fashion-mnist", "--shots", "1",
                 "--out", str(tmp_path / "u")]) == 2
    assert "needs a kalman run" in capsys.readouterr().err
