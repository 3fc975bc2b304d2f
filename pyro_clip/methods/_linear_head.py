"""Linear classification heads over frozen, L2-normalised image features.

Shared by ``linear-probe`` and ``laplace``: a penalised multinomial logistic regression solved
exactly (convex, float64, L-BFGS with strong-Wolfe line search), and the rule for predicting
classes never trained on (their row is the zero-shot text embedding ``s * t_c``, so in the
zero-shot-centred head all rows live on the same logit scale).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from pyro_clip.errors import TrainingError


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
    """
    x, prior_mean = x.double(), prior_mean.double()
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

    loss = opt.step(closure)
    if not torch.isfinite(loss):
        raise TrainingError(f"logistic regression diverged (loss {loss}); raise the penalty lam")
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
