"""Hyper-parameters are chosen on validation only: corrupting the test labels changes nothing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import pyro_clip.pipeline.run as runner
from pyro_clip.pipeline.config import RunConfig
from tests.conftest import TINY


def _run(tmp_path, method, options=None):
    cfg = RunConfig(method=method, backbone=TINY, shots=4, options=options or {},
                    eval_datasets=[], out=str(tmp_path), progress=False)
    return runner.run(cfg)


@pytest.mark.parametrize(("method", "options"), [
    ("tip-adapter", {}),  # the anchors' code searches alpha/beta on test
    # laplace also runs linear-probe's penalty search for its MAP
    ("laplace", {"prior_precision": "val", "n_samples": 4}),
])
def test_search_never_reads_test_labels(method, options, tmp_path, monkeypatch):
    clean = _run(tmp_path / "clean", method, options)
    real_encode = runner.encode_images
    seen_splits = []

    def corrupted(cfg, backbone, images):
        data = real_encode(cfg, backbone, images)
        split = "test" if images.name == "fashion-mnist/test" else images.name
        seen_splits.append(split)
        if split == "test":  # permute every test label: a search reading them would change
            gen = torch.Generator().manual_seed(123)
            data.labels = data.labels[torch.randperm(len(data.labels), generator=gen)]
        return data

    monkeypatch.setattr(runner, "encode_images", corrupted)
    dirty = _run(tmp_path / "dirty", method, options)
    assert "test" in seen_splits
    assert clean.method.selected == dirty.method.selected
    assert clean.method.selected.get("searched", True) or "map" in clean.method.selected
    np.testing.assert_array_equal(clean.evaluations["test"].prediction.probs.numpy(),
                                  dirty.evaluations["test"].prediction.probs.numpy())
    assert clean.metrics["test"]["accuracy"] != dirty.metrics["test"]["accuracy"]
