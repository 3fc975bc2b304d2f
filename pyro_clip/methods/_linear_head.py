"""Linear classification heads over frozen, L2-normalised image features.

Shared by ``linear-probe`` and ``laplace``: a penalised multinomial logistic regression solved
exactly (convex, float64, L-BFGS with strong-Wolfe line search), and the rule for predicting
classes never trained on (their row is the zero-shot text embedding ``s * t_c``, so in the
zero-shot-centred head all rows live on the same logit scale).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from pyro_clip.errors import ConvergenceWarning, TrainingError

#: a solution counts as converged when its largest gradient entry is below ``GRAD_SLACK * tol``
#: (L-BFGS may also stop on ``tolerance_change`` a little above ``tol`` at a true optimum)
GRAD_SLACK = 100.0


def normalize(features: torch.Tensor) -> torch.Tensor:
    """``x / |x|`` in float64 (CLIP's cosine logits use normalised image features)."""
    return F.normalize(features.double(), dim=-1)


def fit_logistic(
    x: torch.Tensor,
    y: torch.Tensor,
    prior_mean: torch.Tensor,
    lam: float,
    bias: bool,
    init: tuple[torch.Tensor, torch.Tensor | None] | None = None,
    max_iter: int = 500,
    tol: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """MAP of ``mean_i CE(W x_i + b, y_i) + lam/2 |W - W0|^2`` (``b`` unpenalised).

    This is L2-regularised logistic regression (sklearn's objective with ``C = 1/(lam N)`` when
    ``W0 = 0``); centring the penalty at ``W0 = s T`` (zero-shot rows) is the Gaussian prior
    ``W ~ N(s T, (lam N)^-1 I)``. Hand-written because scikit-learn cannot centre the penalty at
    non-zero weights. Returns ``(W, b)`` in float64 (``b`` is ``None`` without bias).

    The loss and gradient are re-evaluated at the returned point (``LBFGS.step`` returns the
    loss *before* its iterations): a non-finite loss raises :class:`TrainingError`, and a
    gradient above ``GRAD_SLACK * tol`` (not converged, e.g. ``max_iter`` too small) warns with
    :class:`ConvergenceWarning`.
    """
    x, prior_mean = x.double(), prior_mean.double()
    if not (torch.isfinite(x).all() and torch.isfinite(prior_mean).all()):
        raise TrainingError("logistic regression: the features or the prior mean contain "
                            "inf/NaN values; check the backbone's features (cache) and inputs")
    n_classes, dim = prior_mean.shape
    # Representer theorem: the optimal W - W0 lies in the row span of x, so solve for
    # V (C, r) with W = W0 + V Q^T, x^T = Q R; exact, and r <= N is often much smaller than D.
    q = torch.linalg.qr(x.T, mode="reduced")[0] if x.shape[0] < dim else torch.eye(dim).double()
    # Precondition: rotate to the eigenbasis of the feature second moment G = z^T z / N and
    # rescale each direction by (g_k / 2 + lam)^-1/2 (a bound on the Hessian's curvature there),
    # so L-BFGS sees a well-conditioned problem: V = U diag(s) U'. Exact reparametrisation.
    z = x @ q
    g, rot = torch.linalg.eigh(z.T @ z / z.shape[0])
    m = rot * (g.clamp_min(0) / 2 + lam).rsqrt()
    zp = z @ m
    pen = (m * m).sum(0)  # |V|^2 = sum_k pen_k |U_:,k|^2 since rot is orthogonal
    offset = x @ prior_mean.T
    v0 = (init[0].double() - prior_mean) if init is not None else torch.zeros_like(prior_mean)
    # V = U' m^T with m = rot diag(s): U' = V q rot diag(1/s)
    v = (v0 @ q @ rot / (g.clamp_min(0) / 2 + lam).rsqrt()).clone().requires_grad_()
    params = [v]
    b = None
    if bias:
        start = init[1] if init is not None and init[1] is not None else None
        b = (start.detach().clone().double() if start is not None
             else torch.zeros(n_classes, dtype=torch.float64)).requires_grad_()
        params.append(b)
    opt = torch.optim.LBFGS(params, lr=1, max_iter=max_iter, tolerance_grad=tol,
                            tolerance_change=1e-12, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        logits = offset + zp @ v.T + (b if b is not None else 0)
        loss = F.cross_entropy(logits, y) + 0.5 * lam * (v.pow(2) * pen).sum()
        loss.backward()
        return loss

    opt.step(closure)
    final = closure()  # the loss and gradient where L-BFGS stopped
    grads = [p.grad for p in params if p.grad is not None]
    if not torch.isfinite(final) or not all(torch.isfinite(g).all() for g in grads):
        raise TrainingError(
            f"logistic regression diverged (final loss {final.item()}); check the features "
            f"for inf/NaN values or raise the penalty lam (now {lam})")
    grad_max = max(float(g.abs().max()) for g in grads)
    if grad_max > GRAD_SLACK * tol:
        n_iter = opt.state[v].get("n_iter", max_iter)
        warnings.warn(ConvergenceWarning(
            f"logistic regression did not converge: largest gradient entry {grad_max:.3g} > "
            f"{GRAD_SLACK * tol:.3g} after {n_iter} L-BFGS iterations; raise max_iter (now "
            f"{max_iter}, e.g. --opt max_iter={4 * max_iter}) or the penalty lam (now {lam})"),
            stacklevel=2)
    v = v.detach()
    w = prior_mean + v @ m.T @ q.T
    return w, (b.detach() if b is not None else None)


def class_mapping(classnames: Sequence[str], trained: Sequence[str]) -> torch.Tensor:
    """For each requested class, its row in the trained head, or -1 if never trained on."""
    index = {name: i for i, name in enumerate(trained)}
    return torch.tensor([index.get(name, -1) for name in classnames], dtype=torch.long)


def merge_rows(
    learned: torch.Tensor, zero_shot: torch.Tensor, mapping: torch.Tensor
) -> torch.Tensor:
    """Rows (C, ...) of ``learned`` for trained classes and of ``zero_shot`` for the others."""
    out = zero_shot.to(learned.dtype).clone()
    seen = mapping >= 0
    out[seen] = learned[mapping[seen]]
    return out
