"""A data set and a backbone defined outside the package, one file each (tests/plugins/), plug
in through their registry entry alone and run through the public API; unregistered, they are
gone."""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Iterator
from types import ModuleType

import numpy as np
import pytest
import torch

import pyro_clip as pc
from pyro_clip.backbones import create_backbone, unregister_backbone
from pyro_clip.backbones.base import cosine_logits
from pyro_clip.cli import main
from pyro_clip.data import known_datasets, load_dataset, unregister_dataset
from pyro_clip.errors import BackboneError, DataError
from pyro_clip.suite import dry_run, parse_suite


def _plug_in(module: str, unregister) -> Iterator[ModuleType]:
    """Import (so register) ``module``; afterwards unregister it and forget the import."""
    yield importlib.import_module(module)
    unregister()
    sys.modules.pop(module, None)


@pytest.fixture
def toy_dataset() -> Iterator[ModuleType]:
    yield from _plug_in("tests.plugins.toy_dataset", lambda: unregister_dataset("toy-colours"))


@pytest.fixture
def toy_backbone() -> Iterator[ModuleType]:
    yield from _plug_in("tests.plugins.toy_backbone", lambda: unregister_backbone("toy-colour"))


def test_registered_data_set_loads_lists_and_takes_its_keywords(toy_dataset, capsys) -> None:
    assert known_datasets()[-1] == "toy-colours"
    assert main(["list", "datasets"]) == 0
    assert f"toy-colours: {toy_dataset.ToyColours.description}" in capsys.readouterr().out

    test = pc.load_dataset("toy-colours", "test")
    assert len(test) == 12 and test.classnames == ["red", "green", "blue"]
    np.testing.assert_array_equal(test.labels, np.repeat([0, 1, 2], 4))
    assert len(pc.load_dataset("toy-colours:per_class=2", "train")) == 6
    few = pc.load_dataset("Toy-Colours", "train", shots=1, seed=3)
    assert sorted(few.labels.tolist()) == [0, 1, 2]
    with pytest.raises(DataError, match=r"does not take \['size'\]; it accepts \['per_class'\]"):
        load_dataset("toy-colours", "test", size=4)
    with pytest.raises(DataError, match="did you mean toy-colours"):
        load_dataset("toy-colors", "test")


def test_registered_backbone_encodes_a_registered_data_set(toy_dataset, toy_backbone,
                                                           tmp_path) -> None:
    backbone = pc.load_backbone("toy-colour", device="cpu")
    assert isinstance(backbone, toy_backbone.ToyColourBackbone)
    images = pc.load_dataset("toy-colours", "test")
    feats = pc.encode(backbone, images, cache_dir=tmp_path, workers=0)
    # the joint feature is each image's mean RGB, computed here from the pixels directly
    mean_rgb = np.stack([np.asarray(images.load_image(i), dtype=np.float64).mean((0, 1)) / 255
                         for i in range(len(images))])
    np.testing.assert_allclose(feats.x.double().numpy(), mean_rgb, atol=1e-6)
    # every image's dominant channel is its class, so zero-shot prompts classify all correctly
    weights = backbone.zero_shot_weights(images.classnames)
    torch.testing.assert_close(weights, torch.eye(3))
    predicted = cosine_logits(feats.x, weights, backbone.logit_scale).argmax(-1)
    np.testing.assert_array_equal(predicted.numpy(), images.labels)
    with pytest.raises(BackboneError, match="toy-colour takes nothing after ':'"):
        create_backbone("toy-colour:large")


def test_plug_ins_run_through_the_cli_and_pass_a_suite_dry_run(toy_dataset, toy_backbone,
                                                                 tmp_path) -> None:
    out = tmp_path / "run"
    assert main(["fit", "--dataset", "toy-colours", "--backbone", "toy-colour", "--method",
                 "zero-shot", "--shots", "2", "--out", str(out)]) == 0
    assert json.loads((out / "metrics.json").read_text())["test"]["accuracy"] == 1.0
    suite = parse_suite({"name": "toy", "backbone": "toy-colour", "methods": ["zero-shot"],
                         "datasets": ["toy-colours", "fashion-mnist"], "shots": [1],
                         "seeds": [1], "protocols": ["few-shot"], "out": str(tmp_path / "runs")})
    plan = dry_run(suite)
    assert plan.problems == [] and any("toy-colour: sizes unknown" in n for n in plan.notes)


def test_unregistered_plug_ins_are_unknown_again(toy_dataset, toy_backbone) -> None:
    unregister_dataset("toy-colours")
    unregister_backbone("toy-colour")
    assert "toy-colours" not in known_datasets()
    with pytest.raises(DataError, match=r"unknown data set 'toy-colours'; known: \['fashion"):
        load_dataset("toy-colours", "test")
    with pytest.raises(BackboneError, match="unknown backbone 'toy-colour'; use 'conse'"):
        create_backbone("toy-colour")
    importlib.reload(toy_dataset)  # registering again (as the fixtures' clean-up expects)
    importlib.reload(toy_backbone)
