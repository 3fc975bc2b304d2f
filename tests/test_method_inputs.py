"""Bad inputs to the Python API: one clear error, never NaN probabilities or a raw traceback."""

from __future__ import annotations

import pytest
import torch

from pyro_clip.errors import DataError
from pyro_clip.methods import MethodContext, create_method, get_method_class, known_methods
from pyro_clip.types import FeatureSet

NAMES = ["a", "b", "c"]


def _data(backbone, n_per_class: int = 4, seed: int = 0) -> FeatureSet:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(len(NAMES)).repeat_interleave(n_per_class)
    x = torch.randn(len(y), backbone.embed_dim, generator=g)
    return FeatureSet({"joint": x / x.norm(dim=1, keepdim=True)}, y, NAMES, "syn")


@pytest.mark.parametrize("name", [m for m in known_methods()
                                  if get_method_class(m).feature_kind != "pixels"])
def test_every_method_refuses_nan_features_in_predict(name):
    x = torch.randn(3, 8)
    x[1, 4] = float("nan")
    with pytest.raises(DataError, match=rf"{name} predict: .*NaN or inf in 1 of 3 rows "
                                        r"\(first: row 1\)"):
        create_method(name).predict(x, NAMES)


def test_linear_probe_fitted_then_nan_features_raise(tiny_backbone):
    method = create_method("linear-probe").setup(MethodContext(tiny_backbone))
    train = _data(tiny_backbone)
    method.fit(train, _data(tiny_backbone, 2, seed=1))
    x = train.features["joint"][:4].clone()
    assert torch.isfinite(method.predict(x, NAMES).probs).all()
    x[2, 0] = float("inf")
    with pytest.raises(DataError, match=r"linear-probe predict: .*row 2\); re-extract"):
        method.predict(x, NAMES)
    bad_train = _data(tiny_backbone)
    bad_train.features["joint"][5] = float("nan")
    with pytest.raises(DataError, match=r"linear-probe fit: features \(syn, joint\) .* row 5"):
        method.fit(bad_train, _data(tiny_backbone, 2, seed=1))


def test_feature_set_labels_are_checked_where_it_is_built():
    x = torch.zeros(4, 2)
    with pytest.raises(DataError, match=r"label 3 \(row 1, 2 such rows\) is outside 0\.\.2"):
        FeatureSet({"joint": x}, torch.tensor([0, 3, 1, 5]), NAMES, "t")
    with pytest.raises(DataError, match=r"label -1 \(row 0"):
        FeatureSet({"joint": x}, torch.tensor([-1, 0, 1, 2]), NAMES, "t")
    with pytest.raises(DataError, match=r"1-D integer tensor, got torch\.float32"):
        FeatureSet({"joint": x}, torch.tensor([0.0, 1.0, 1.0, 2.0]), NAMES, "t")
    with pytest.raises(DataError, match=r"shape \(4, 2\) but there are 3 labels"):
        FeatureSet({"joint": x}, torch.tensor([0, 1, 2]), NAMES, "t")
    ok = FeatureSet({"joint": x}, torch.tensor([0, 1, 2, 2]), NAMES, "t")
    assert ok.subset([2, 3], class_ids=[2]).labels.tolist() == [0, 0]


def test_empty_and_finite_inputs_pass_the_check():
    from pyro_clip.methods.base import check_finite_features

    check_finite_features("m", "fit", torch.zeros(0, 5), torch.zeros(3), ["a"],
                          FeatureSet({"joint": torch.zeros(0, 4)}, torch.zeros(0, dtype=torch.long),
                                     NAMES, "empty"))
