"""Sequential use of a fitted Kalman adapter: more labels (and new classes) without a refit.

A Kalman filter's posterior after one batch is the prior of the next:
``N(mu_k, P_k) -> N(mu_k+1, P_k+1)`` by the same update that fitted the model (docs/kalman.md,
"Sequential use"). :func:`sequential_update` runs that update on new labelled features and
keeps every data-dependent choice of the first fit: the prior variance chosen on validation,
the input centring / rotation computed from the first training set, the adaptive observation
noise ``R`` (it continues from its last value) and the gate threshold.

New classes enter with the prior they would have had at fit time, ``N([s t_c, b0_c], s0 I)``
(zero-shot text embedding ``t_c``), independent of the fitted classes: each structure's state
is embedded in the leading (class-major) corner of the larger prior's state
(:func:`grow_covariance`). For the cosine observation this equals having had the class from
the start (no earlier observation involves its weights). For the categorical EKF the earlier
softmax observations did not include the new logits; the likelihood they miss is exactly

    Cat(y | softmax(z_old + new)) = Cat(y | softmax(z_old)) * q,
    q = P(y in old | z) = sigmoid(eta),  eta = logsumexp(z_old) - logsumexp(z_new),

so every example seen before (kept as ``seen_features``) is assimilated once more as the
Bernoulli observation "y is one of the old classes" (:func:`assimilate_old_label_evidence`),
an EKF step on ``eta`` linearised at the mean. It runs after the new examples: at the prior
mean the new logits are low on the old images, ``q`` is near 1 and the step's information
``q (1 - q)`` is near 0, whereas once the new classes' weights have moved it pulls them back
where they would claim old images. Without it an update holding only new-class examples
raises the new logits everywhere and the old classes collapse.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from pyro_clip.errors import DataError
from pyro_clip.inference.covariance import Covariance
from pyro_clip.inference.kalman import KalmanState
from pyro_clip.types import FeatureSet

if TYPE_CHECKING:
    from pyro_clip.methods.kalman import KalmanAdapter


def batch_order(n: int, batch_size: int, rounds: int, seed: int) -> list[torch.Tensor]:
    """Minibatch indices: ``rounds`` random permutations of ``0..n-1`` (one CPU generator
    seeded ``seed``, so every device gets the same order), each split into ``batch_size``."""
    gen = torch.Generator().manual_seed(seed)
    return [idx for _ in range(rounds)
            for idx in torch.randperm(n, generator=gen, device=gen.device).split(batch_size)]


def grow_covariance(old: Covariance, prior: Covariance) -> Covariance:
    """``prior`` (a fresh structure over more classes) with ``old``'s state in its leading part.

    Every structure lays parameters out class-major, so appending classes appends parameters:
    ``full`` ``blockdiag(P, s0 I)``, ``block`` extra blocks ``s0 I``, ``diag`` extra ``s0``,
    ``lowrank`` extra precision ``1/s0`` with zero rows of ``W``, ``kron`` the class factor
    ``A`` padded with zeros (``[[A, 0], [0, 0]] kron G + tau I`` is ``blockdiag(A kron G +
    tau I, tau I)``) and the input factor, count and ``tau`` copied. Returns ``prior``.
    """
    if type(old) is not type(prior):
        raise TypeError(f"cannot grow a {type(old).__name__} into a {type(prior).__name__}")
    grown: dict[str, Any] = dict(prior.state_dict())
    for key, value in old.state_dict().items():
        target = grown[key]
        if value.ndim != target.ndim or any(a > b for a, b in zip(value.shape, target.shape,
                                                                  strict=True)):
            raise ValueError(f"covariance state {key!r} {tuple(value.shape)} does not fit in "
                             f"{tuple(target.shape)}")
        target = target.clone()
        target[tuple(slice(0, s) for s in value.shape)] = value.to(target)
        grown[key] = target
    prior.load_state_dict(grown)
    return prior


def map_labels(
    known: Sequence[str], classnames: Sequence[str], labels: torch.Tensor
) -> tuple[list[str], torch.Tensor]:
    """Labels of a set over ``classnames`` re-indexed into the model's classes ``known``.

    Returns the class names to append (labelled classes the model has never seen, in the
    order of ``classnames``) and the labels as indices into ``known + new``.
    """
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= len(classnames)):
        raise DataError(f"labels must index the set's {len(classnames)} class names; got "
                        f"values {int(labels.min())}..{int(labels.max())}")
    present = sorted(set(labels.tolist()))
    new = [classnames[c] for c in present if classnames[c] not in known]
    index = {c: i for i, c in enumerate([*known, *new])}
    remap = torch.tensor([index.get(c, -1) for c in classnames], dtype=torch.long)
    return new, remap[labels.cpu()].to(labels.device)


def sequential_update(method: KalmanAdapter, train: FeatureSet) -> dict[str, Any]:
    """One more filtering pass of ``method`` over ``train`` (see module docstring); in place.

    The k-th update of a model orders its minibatches with seed ``ctx.seed + k``. Returns
    the record appended to ``method.selected["updates"]``.
    """
    state, _ = method._fitted()
    x = train.features[method.feature_kind]
    method._check(x, "update")
    if len(train) == 0:
        raise DataError("kalman update: the feature set has no examples; pass labelled images")
    new, y = map_labels(method.train_classnames, train.classnames, train.labels)
    if new:
        _add_classes(method, new)
        state, _ = method._fitted()
    text = method.ctx.text_classifier(method.train_classnames)
    method.n_updates += 1
    method.obs_var, gated = method._assimilate(
        state, x, y, text, method.obs_var, method.ctx.seed + method.n_updates,
        f"update {method.n_updates}")
    if new and method.options["observation"] == "categorical":
        assimilate_old_label_evidence(method, len(method.train_classnames) - len(new))
    seen = method.seen_features  # None: a checkpoint written before updates existed
    method.seen_features = x.float() if seen is None else torch.cat([seen, x.float().to(seen)])
    record = {"n_examples": len(train), "new_classes": new, "gated_examples": gated,
              "final_obs_noise": method.obs_var}
    method.selected.setdefault("updates", []).append(record)
    return record


def assimilate_old_label_evidence(method: KalmanAdapter, n_old: int) -> None:
    """Bernoulli observations ``y in {first n_old classes}`` of every seen example (module
    docstring): with ``d eta / dz = [softmax(z_old), -softmax(z_new)]`` and ``h`` the chain
    rule through the logit Jacobian, the EKF step is ``P+^-1 = P^-1 + q (1 - q) h^T h`` and
    ``mu+ = mu + P+ h^T (1 - q)``: :meth:`KalmanState.update_gaussian` with noise
    ``1 / (q (1 - q))`` and residual ``1 / q``."""
    state, adapter = method._fitted()
    seen = method.seen_features
    if seen is None or len(seen) == 0:
        return
    text = method.ctx.text_classifier(method.train_classnames)
    for xb in seen.split(method._batch_size()):
        z = adapter.logits(state.mean, xb, text).to(state.mean)
        old, new = z[:, :n_old], z[:, n_old:]
        eta = old.logsumexp(1) - new.logsumexp(1)
        coef = torch.cat([old.softmax(1), -new.softmax(1)], 1).unsqueeze(1)  # (B, 1, C)
        h = adapter.jacobian(state.mean, xb, text).mix(coef)
        q, info = torch.sigmoid(eta), torch.sigmoid(eta) * torch.sigmoid(-eta)
        state.update_gaussian(h, 1.0 / info, 1.0 / q)
    state.cov.repair()


def _add_classes(method: KalmanAdapter, new: list[str]) -> None:
    """Append ``new`` classes to a linear head with their zero-shot prior (module docstring).

    A class-agnostic adapter (residual) has no per-class weights: only the class list grows.
    """
    state, adapter = method._fitted()
    method.train_classnames = [*method.train_classnames, *new]
    if not getattr(adapter, "class_agnostic", False):
        text = method.ctx.text_classifier(method.train_classnames)
        method.adapter = method._make_adapter(text)
        grown = method.adapter.prior_mean().to(state.mean)
        grown[: state.mean.numel()] = state.mean
        cov = grow_covariance(state.cov, method._make_cov(method.prior_var))
        fresh = KalmanState(grown, cov)
        fresh.n_updates = state.n_updates
        method.state = fresh
