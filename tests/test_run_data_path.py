"""The run's data path: data-set defaults, evaluation-set checks up front, and encoding only
the images a run uses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import pyro_clip.features.cache as features
import pyro_clip.pipeline.run as runner
from pyro_clip.cli import build_config, make_parser
from pyro_clip.data import default_eval_datasets, default_templates, eval_class_ids
from pyro_clip.errors import DataError
from pyro_clip.pipeline.config import RunConfig
from pyro_clip.utils.io import read_json
from tests.conftest import TINY

CLASSES = ["cat", "dog", "fox", "owl"]
COUNTS = {"train": 6, "val": 4, "test": 3}


@pytest.fixture(scope="module")
def folder_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("animals")
    rng = np.random.default_rng(0)
    for split, n in COUNTS.items():
        for c in CLASSES:
            for i in range(n):
                path = root / split / c / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(path)
    return root


def test_defaults_come_from_the_data_set_registry():
    assert default_eval_datasets("fashion-mnist") == ["fashion-mnist-c"]
    assert default_eval_datasets("imagenet") == [
        "imagenet-v2", "imagenet-sketch", "imagenet-a", "imagenet-r"]
    assert default_eval_datasets("oxford_pets") == [] and default_eval_datasets("folder") == []
    assert default_templates("fashion-mnist") == ["a photo of a {}."]  # the demo's numbers
    assert default_templates("Pets") == ["a photo of a {}, a type of pet."]
    assert default_templates("dtd") == ["{} texture."]
    assert default_templates("eurosat") == ["a centered satellite photo of {}."]
    assert default_templates("ucf101") == ["a photo of a person doing {}."]
    imagenet = default_templates("imagenet")
    assert len(imagenet) == 7 and "itap of a {}." in imagenet
    assert all("{}" in t for t in imagenet)
    with pytest.raises(DataError, match="unknown data set 'mnist'"):
        default_templates("mnist")


def test_config_defaults_resolve_per_data_set_and_cli_overrides():
    cfg = RunConfig(dataset="oxford_pets")
    assert cfg.eval_datasets is None and cfg.templates is None
    resolved = cfg.resolved()
    assert resolved.eval_datasets == [] and resolved.templates == [
        "a photo of a {}, a type of pet."]
    assert RunConfig().resolved().eval_datasets == ["fashion-mnist-c"]
    parser = make_parser()
    assert build_config(parser.parse_args(["fit"])).eval_datasets is None
    assert build_config(parser.parse_args(["fit", "--no-eval-datasets"])).eval_datasets == []
    cli = build_config(parser.parse_args(["fit", "--eval-dataset", "fashion-mnist-c",
                                          "--template", "a {} photo."]))
    assert cli.eval_datasets == ["fashion-mnist-c"] and cli.templates == ["a {} photo."]


def test_eval_class_ids_subset_and_base_classes():
    train = ["a", "b", "c", "d"]
    assert eval_class_ids("e", ["b", "d"], "t", train) is None
    assert eval_class_ids("e", ["d", "b"], "t", train, keep=["a", "b"]) == [1]
    with pytest.raises(DataError, match="2 of its 3 classes outside"):
        eval_class_ids("e", ["a", "x", "y"], "t", train)
    with pytest.raises(DataError, match="none of the 2 base classes"):
        eval_class_ids("e", ["c", "d"], "t", train, keep=["a", "b"])


class _Counter:
    def __init__(self, monkeypatch):
        self.encoded: list[int] = []
        real = features.iter_features

        def counting(backbone, images, indices, *args, **kwargs):
            self.encoded.append(len(indices))
            return real(backbone, images, indices, *args, **kwargs)

        monkeypatch.setattr(features, "iter_features", counting)


@pytest.mark.parametrize("protocol", ["few-shot", "base-to-new"])
def test_foreign_evaluation_set_is_refused_before_encoding(folder_root, tmp_path, protocol,
                                                           monkeypatch):
    # old code: few-shot scored animals against Fashion-MNIST labels; base-to-new raised
    # IndexError after extracting every feature
    counter = _Counter(monkeypatch)
    cfg = RunConfig(backbone=TINY, dataset="folder", data_root=str(folder_root), shots=2,
                    protocol=protocol, eval_datasets=["fashion-mnist-c"], out=str(tmp_path),
                    progress=False)
    with pytest.raises(DataError, match="'fashion-mnist-c' has 10 of its 10 classes outside"):
        runner.run(cfg)
    assert counter.encoded == []


def test_run_encodes_only_the_images_it_uses(folder_root, tmp_path, monkeypatch):
    counter = _Counter(monkeypatch)
    cache = tmp_path / "cache"
    cfg = RunConfig(backbone=TINY, dataset="folder", data_root=str(folder_root), shots=2,
                    out=str(tmp_path / "run"), cache_dir=str(cache), progress=False)
    result = runner.run(cfg)
    c = len(CLASSES)
    assert sum(counter.encoded) == 2 * c + 2 * c + COUNTS["test"] * c  # not the 6-per-class split
    config = read_json(tmp_path / "run" / "config.json")
    assert config["eval_datasets"] == [] and config["templates"] == ["a photo of a {}."]
    assert list(result.evaluations) == ["test"]
    # another seed: the test rows and any overlapping shots come from the cache
    first = sum(counter.encoded)
    runner.run(RunConfig(backbone=TINY, dataset="folder", data_root=str(folder_root), shots=2,
                         seed=2, out=str(tmp_path / "run2"), cache_dir=str(cache),
                         progress=False, eval_datasets=[]))
    assert sum(counter.encoded) - first <= 2 * c + 2 * c  # at most the new shots


def test_base_to_new_encodes_base_class_shots_only(folder_root, tmp_path, monkeypatch):
    counter = _Counter(monkeypatch)
    cfg = RunConfig(backbone=TINY, dataset="folder", data_root=str(folder_root), shots=2,
                    protocol="base-to-new", out=str(tmp_path / "run"),
                    cache_dir=str(tmp_path / "cache"), progress=False)
    result = runner.run(cfg)
    assert sum(counter.encoded) == 2 * 2 + 2 * 2 + COUNTS["test"] * len(CLASSES)
    assert result.evaluations["base"].classnames == ["cat", "dog"]
    assert result.evaluations["new"].classnames == ["fox", "owl"]
