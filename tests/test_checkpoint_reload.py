"""Every method with weights: ``pyro-clip fit`` then ``pyro-clip evaluate`` reloads the checkpoint
and reproduces the fitted run's test predictions (issue 13: ``laplace`` could not be reloaded)."""

from __future__ import annotations

import numpy as np
import pytest

from pyro_clip.cli import main
from pyro_clip.methods import get_method_class, known_methods
from tests.conftest import TINY

WITH_WEIGHTS = [m for m in known_methods() if get_method_class(m).has_weights]


def cheap_options(method: str) -> list[str]:
    """One epoch, small grids: the test is about the checkpoint, not the fit."""
    defaults = get_method_class(method).default_options()
    opts = {"epochs": 1} if "epochs" in defaults else {}
    if "prior_var_grid" in defaults:
        opts["prior_var_grid"] = "[1.0]"
    if "n_samples" in defaults:
        opts["n_samples"] = 4
    if "prompt_depth" in defaults:  # MaPLe: the tiny ViT has 2 layers (the paper's 9 is refused)
        opts["prompt_depth"] = 2
    return [arg for k, v in opts.items() for arg in ("--opt", f"{k}={v}")]


@pytest.mark.parametrize("method", WITH_WEIGHTS)
def test_evaluate_reloads_every_method_with_weights(method, tmp_path):
    fit, ev = tmp_path / "fit", tmp_path / "ev"
    # no shifted sets: only the test predictions are compared
    assert main(["fit", "--method", method, "--backbone", TINY, "--shots", "1", "--seed", "3",
                 "--no-progress", "--no-eval-datasets", "--out", str(fit),
                 *cheap_options(method)]) == 0
    assert (fit / "checkpoint.pt").exists()
    assert main(["evaluate", str(fit), "--dataset", "fashion-mnist", "--out", str(ev)]) == 0
    fitted, reloaded = np.load(fit / "predictions.npz"), np.load(ev / "predictions.npz")
    np.testing.assert_array_equal(reloaded["fashion-mnist/labels"], fitted["test/labels"])
    # same weights, same float32 arithmetic on the same machine: identical up to float32 rounding
    np.testing.assert_allclose(reloaded["fashion-mnist/probs"], fitted["test/probs"],
                               rtol=1e-5, atol=1e-6)
