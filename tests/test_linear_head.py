"""fit_logistic checks the point it returns: the final loss and gradient, not LBFGS.step's
return value (the loss before the step; issue 16)."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import minimize

from pyro_clip.errors import ConvergenceWarning, TrainingError
from pyro_clip.methods._linear_head import fit_logistic


def _problem(n=40, d=6, c=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % c
    means = torch.randn(c, d, generator=g, dtype=torch.float64)
    x = F.normalize(means[y] + 0.7 * torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1)
    w0 = torch.randn(c, d, generator=g, dtype=torch.float64)
    return x, y, w0


def _objective(x, y, w0, lam):
    def f(flat):
        w = torch.tensor(flat, dtype=torch.float64).reshape(w0.shape)
        return float(F.cross_entropy(x @ w.T, y) + 0.5 * lam * ((w - w0) ** 2).sum())
    return f


def test_converged_solution_matches_scipy_and_does_not_warn():
    x, y, w0 = _problem()
    lam = 0.02
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        w, _ = fit_logistic(x, y, w0, lam, bias=False)
    f = _objective(x, y, w0, lam)
    ref = minimize(f, w0.numpy().ravel(), method="BFGS", options={"gtol": 1e-10})
    assert f(w.numpy().ravel()) == pytest.approx(ref.fun, rel=1e-9, abs=1e-12)


def test_stopping_before_convergence_warns_naming_max_iter():
    x, y, w0 = _problem()
    with pytest.warns(ConvergenceWarning, match=r"did not converge.*raise max_iter \(now 2"):
        fit_logistic(x, y, w0, 1e-3, bias=True, max_iter=2)


def test_non_finite_features_are_refused_before_solving():
    x, y, w0 = _problem()
    x[3, 2] = float("inf")
    with pytest.raises(TrainingError, match="inf/NaN"):
        fit_logistic(x, y, w0, 0.1, bias=False)
