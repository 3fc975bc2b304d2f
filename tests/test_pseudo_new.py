"""select=pseudo-new: folds of the base classes, choice recorded, no new-class or test data read."""

import pytest
import torch

from pyro_clip.config import RunConfig
from pyro_clip.errors import ConfigError
from pyro_clip.features import FeatureSet
from pyro_clip.prompts.pseudo_new import pseudo_folds

OPTIONS = {"select": "pseudo-new", "select_grid": {"lam": [0.1, 5.0], "alpha": [1.0]},
           "epochs": 2, "augment": "none"}


def test_folds_mirror_the_base_to_new_split():
    assert pseudo_folds(5) == [([0, 1, 2], [3, 4]), ([2, 3, 4], [0, 1])]
    assert pseudo_folds(4, 1) == [([0, 1], [2, 3])]
    with pytest.raises(ConfigError, match=">= 2 training classes"):
        pseudo_folds(1)


def test_select_needs_something_to_tune():
    from pyro_clip.methods import create_method

    with pytest.raises(ConfigError, match="nothing to tune"):
        create_method("coop", select="pseudo-new")
    with pytest.raises(ConfigError, match="select must be one of"):
        create_method("coop-ove-pg", select="test-set")


def _run(tmp_path, name):
    from pyro_clip.runner import run

    cfg = RunConfig(method="coop-ove-pg", backbone="open_clip:pyro-clip-tiny",
                    protocol="base-to-new", shots=2, eval_datasets=[], progress=False,
                    options=OPTIONS, out=str(tmp_path / name))
    return run(cfg)


def test_choice_is_recorded_and_ignores_new_and_test_data(tmp_path, monkeypatch):
    import pyro_clip.runner as runner

    clean = _run(tmp_path, "clean")
    sel = clean.method.selected["pseudo_new"]
    assert [row["lam"] for row in sel["table"]] == [0.1, 5.0]
    best = max(sel["table"], key=lambda r: (r["pseudo_h"], r["pseudo_new"]))
    assert sel["best"] == {"lam": best["lam"], "alpha": 1.0}
    assert clean.method.options["lam"] == best["lam"]
    saved = runner.read_run_config(tmp_path / "clean")[1]["selected_hyperparameters"]
    assert saved["pseudo_new"]["best"] == sel["best"]

    real = runner.encode_images
    seen = []

    def poisoned(cfg, backbone, images):
        data = real(cfg, backbone, images)
        if images.name != "fashion-mnist/test":
            return data
        g = torch.Generator().manual_seed(99)  # test images replaced by noise, labels shuffled
        feats = {k: torch.randn(v.shape, generator=g) for k, v in data.features.items()}
        return FeatureSet(feats, data.labels[torch.randperm(len(data), generator=g)],
                          data.classnames, data.name)

    from pyro_clip.methods.prompt_learning import PromptLearningMethod

    real_fit = PromptLearningMethod.fit

    def spy(self, train, val):
        seen.append((list(train.classnames), list(val.classnames)))
        return real_fit(self, train, val)

    monkeypatch.setattr(runner, "encode_images", poisoned)
    monkeypatch.setattr(PromptLearningMethod, "fit", spy)
    dirty = _run(tmp_path, "poisoned")
    assert dirty.method.selected["pseudo_new"] == sel
    base = clean.evaluations["base"].classnames
    assert seen == [(base, base)] and not set(base) & set(clean.evaluations["new"].classnames)
    assert dirty.metrics["base_to_new"] != clean.metrics["base_to_new"]  # the poison did land
