"""select=pseudo-new: folds of the base classes, choice recorded, no new-class or test data read."""

import math

import pytest
import torch
from scipy.stats import hmean

from pyro_clip.errors import ConfigError
from pyro_clip.features.cache import FeatureSet
from pyro_clip.pipeline.config import RunConfig
from pyro_clip.training.pseudo_new import pseudo_folds, select_pseudo_new

OPTIONS = {"select": "pseudo-new", "select_grid": {"lam": [0.1, 5.0], "alpha": [1.0]},
           "epochs": 2, "augment": "none"}


def test_folds_mirror_the_base_to_new_split():
    assert pseudo_folds(5) == [([0, 1, 2], [3, 4]), ([2, 3, 4], [0, 1])]
    assert pseudo_folds(4, 1) == [([0, 1], [2, 3])]
    with pytest.raises(ConfigError, match=">= 2 training classes"):
        pseudo_folds(1)


#: hand-made (accuracy, NLL) per lambda on pseudo-base / pseudo-new: the accuracies tie
TABLE = {0.1: {"base": (1.0, 0.2), "new": (0.5, 1.5)},
         1.0: {"base": (1.0, 0.3), "new": (0.5, 1.0)},
         5.0: {"base": (1.0, 0.8), "new": (0.5, 0.9)}}


def _four_classes() -> tuple[FeatureSet, FeatureSet]:
    names = ["a", "b", "c", "d"]
    labels = torch.arange(4).repeat(2)
    return (FeatureSet({"image": torch.zeros(8, 3)}, labels, names, "train"),
            FeatureSet({"image": torch.zeros(4, 3)}, torch.arange(4), names, "val"))


def _table_fit_score(cand, trained_on: FeatureSet):
    def evaluate(eval_set: FeatureSet) -> tuple[float, float]:
        side = "base" if eval_set.classnames == trained_on.classnames else "new"
        return TABLE[cand["lam"]][side]

    return evaluate


def test_criteria_and_ties_on_a_hand_made_table():
    train, val = _four_classes()
    axes = {"lam": list(TABLE)}

    def strength(cand):
        return (cand["lam"],)

    # accuracy: H(1.0, 0.5) ties everywhere; the first wins, or the strongest prior with prefer
    first = select_pseudo_new(axes, _table_fit_score, train, val)
    assert first["best"] == {"lam": 0.1}
    assert first["pseudo_h"] == pytest.approx(hmean([1.0, 0.5]), rel=1e-12)
    assert select_pseudo_new(axes, _table_fit_score, train, val, prefer=strength)["best"] == {
        "lam": 5.0}
    # log-score: H of exp(-NLL), computed independently with scipy
    lik = {lam: hmean([math.exp(-t["base"][1]), math.exp(-t["new"][1])])
           for lam, t in TABLE.items()}
    smooth = select_pseudo_new(axes, _table_fit_score, train, val, score="log-score",
                               prefer=strength)
    assert smooth["best"] == {"lam": max(lik, key=lik.get)} == {"lam": 1.0}
    assert smooth["score"] == "log-score"
    for row in smooth["table"]:
        assert row["pseudo_h_lik"] == pytest.approx(lik[row["lam"]], rel=1e-12)
        assert row["pseudo_new_nll"] == pytest.approx(TABLE[row["lam"]]["new"][1], rel=1e-12)
    with pytest.raises(ConfigError, match="select_score must be one of"):
        select_pseudo_new(axes, _table_fit_score, train, val, score="test-accuracy")


def test_select_needs_something_to_tune():
    from pyro_clip.methods import create_method

    with pytest.raises(ConfigError, match="nothing to tune"):
        create_method("coop", select="pseudo-new")
    with pytest.raises(ConfigError, match="select must be one of"):
        create_method("coop-ove-pg", select="test-set")
    with pytest.raises(ConfigError, match="select_score must be one of"):
        create_method("coop-ove-pg", select="pseudo-new", select_score="test-accuracy")


def _run(tmp_path, name, score):
    from pyro_clip.pipeline.run import run

    cfg = RunConfig(method="coop-ove-pg", backbone="open_clip:pyro-clip-tiny",
                    protocol="base-to-new", shots=2, eval_datasets=[], progress=False,
                    options={**OPTIONS, "select_score": score}, out=str(tmp_path / name))
    return run(cfg)


@pytest.mark.parametrize("score", ["accuracy", "log-score"])
def test_choice_is_recorded_and_ignores_new_and_test_data(tmp_path, monkeypatch, score):
    import pyro_clip.pipeline.run as runner

    clean = _run(tmp_path, "clean", score)
    sel = clean.method.selected["pseudo_new"]
    assert [row["lam"] for row in sel["table"]] == [0.1, 5.0] and sel["score"] == score
    columns = ("pseudo_h", "pseudo_new") if score == "accuracy" else ("pseudo_h_lik",
                                                                      "pseudo_new_lik")
    # max() keeps the first of equals: reversed, so exact ties go to the larger lambda
    best = max(reversed(sel["table"]), key=lambda r: tuple(r[c] for c in columns))
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
    dirty = _run(tmp_path, "poisoned", score)
    assert dirty.method.selected["pseudo_new"] == sel
    base = clean.evaluations["base"].classnames
    assert seen == [(base, base)] and not set(base) & set(clean.evaluations["new"].classnames)
    assert dirty.metrics["base_to_new"] != clean.metrics["base_to_new"]  # the poison did land
