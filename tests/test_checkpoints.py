"""Checkpoints: a fitted run reloads and reproduces its predictions; other backbones are refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pyro_clip.backbones.open_clip_backbone import OpenClipBackbone
from pyro_clip.cli import main
from pyro_clip.errors import BackboneError
from pyro_clip.pipeline.run import load_trained_method
from tests.conftest import TINY


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt") / "run"
    assert main(["fit", "--method", "linear-probe", "--backbone", TINY, "--shots", "2",
                 "--no-progress", "--out", str(out)]) == 0
    assert (out / "checkpoint.pt").exists()
    return out


@pytest.mark.parametrize(("dataset", "key"), [("fashion-mnist", "test"),
                                              ("fashion-mnist-c", "fashion-mnist-c")])
def test_evaluate_reloads_and_reproduces_predictions(fitted, dataset, key, tmp_path):
    ev = tmp_path / "ev"
    assert main(["evaluate", str(fitted), "--dataset", dataset, "--out", str(ev)]) == 0
    fit_preds = np.load(fitted / "predictions.npz")
    ev_preds = np.load(ev / "predictions.npz")
    np.testing.assert_array_equal(ev_preds[f"{dataset}/probs"], fit_preds[f"{key}/probs"])
    np.testing.assert_array_equal(ev_preds[f"{dataset}/labels"], fit_preds[f"{key}/labels"])


def test_other_backbone_is_refused_naming_both(fitted, tiny_backbone, tmp_path):
    weights = tmp_path / "other_tiny.pt"
    perturbed = {k: v + 0.01 if v.is_floating_point() else v
                 for k, v in tiny_backbone.model.state_dict().items()}
    torch.save(perturbed, weights)
    other = OpenClipBackbone("pyro-clip-tiny", pretrained=str(weights))
    with pytest.raises(BackboneError) as err:
        load_trained_method(fitted, other)
    message = str(err.value)
    assert tiny_backbone.name in message and other.name in message
    assert tiny_backbone.name != other.name
