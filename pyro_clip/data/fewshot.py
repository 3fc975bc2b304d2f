"""Few-shot sampling and class splits following the Dassl/CoOp conventions.

* ``sample_few_shot``: ``shots`` images per class, without replacement, from a numpy Generator
  seeded by ``seed`` (classes visited in ascending label order); a class with fewer images
  than ``shots`` contributes all of them, with a warning (Dassl does the same).
* ``make_few_shot``: K shots per class for training, ``min(K, 4)`` per class for validation.
* ``base_new_classes``: labels sorted, the first ``ceil(n / 2)`` are base, the rest new.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pyro_clip.data.base import LabeledImages, SubsetImages
from pyro_clip.errors import DataError

#: Dassl validates few-shot runs on at most this many shots per class
MAX_VAL_SHOTS = 4


def _check_int(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise DataError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def sample_few_shot(labels: np.ndarray, shots: int, seed: int) -> np.ndarray:
    """Indices of ``shots`` examples per class, drawn without replacement; sorted, int64.

    Deterministic in ``(labels, shots, seed)``. Classes with fewer than ``shots`` examples
    contribute all of theirs and trigger one ``UserWarning`` naming them.
    """
    shots = _check_int(shots, "shots", 1)
    seed = _check_int(seed, "seed", 0)
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"labels must be a 1-D integer array, got {labels.dtype} {labels.shape}")
    rng = np.random.default_rng(seed)
    picks: list[np.ndarray] = []
    short: list[int] = []
    for c in np.unique(labels):
        pool = np.flatnonzero(labels == c)
        if len(pool) < shots:
            short.append(int(c))
            picks.append(pool)
        else:
            picks.append(rng.choice(pool, size=shots, replace=False))
    if short:
        warnings.warn(
            f"classes {short} have fewer than {shots} examples; using all of them",
            stacklevel=2,
        )
    if not picks:
        return np.zeros(0, dtype=np.int64)
    return np.sort(np.concatenate(picks)).astype(np.int64)


def few_shot_indices(
    train_labels: np.ndarray, val_labels: np.ndarray | None, shots: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of K train shots and min(K, 4) val shots per class (Dassl convention).

    With ``val_labels=None`` (no validation split, e.g. ImageNet) the validation shots are
    drawn from the training examples not picked for training, so the two never overlap.
    """
    shots = _check_int(shots, "shots", 1)
    seed = _check_int(seed, "seed", 0)
    train_idx = sample_few_shot(train_labels, shots, seed)
    val_shots = min(shots, MAX_VAL_SHOTS)
    if val_labels is None:
        rest = np.setdiff1d(np.arange(len(train_labels)), train_idx)
        return train_idx, rest[sample_few_shot(train_labels[rest], val_shots, seed)]
    return train_idx, sample_few_shot(val_labels, val_shots, seed)


@dataclass(frozen=True)
class FewShotSplit:
    """A few-shot episode: K-shot train, min(K, 4)-shot val, and the full test split."""

    train: LabeledImages
    val: LabeledImages
    test: LabeledImages
    shots: int
    seed: int


def make_few_shot(
    train: LabeledImages, val: LabeledImages, test: LabeledImages, shots: int, seed: int
) -> FewShotSplit:
    """Sample ``shots`` per class from ``train`` and ``min(shots, 4)`` per class from ``val``.

    If ``val is train`` (a data set without its own validation split, e.g. ImageNet), the
    validation shots are drawn from the training images *not* picked for training, so the two
    never overlap. ``test`` is returned unchanged.
    """
    shots = _check_int(shots, "shots", 1)
    seed = _check_int(seed, "seed", 0)
    for ds, role in ((val, "val"), (test, "test")):
        if ds.classnames != train.classnames:
            raise DataError(
                f"{role} split {ds.name!r} has different class names from train {train.name!r}"
            )
    train_idx, val_idx = few_shot_indices(
        train.labels, None if val is train else val.labels, shots, seed
    )
    val_shots = min(shots, MAX_VAL_SHOTS)
    tag = f"{shots}shot-seed{seed}"
    return FewShotSplit(
        train=SubsetImages(train, train_idx, name=f"{train.name}/{tag}"),
        val=SubsetImages(val, val_idx, name=f"{val.name}/{val_shots}shot-seed{seed}"),
        test=test,
        shots=shots,
        seed=seed,
    )


def base_new_classes(num_classes: int) -> tuple[list[int], list[int]]:
    """Base-to-new split of labels ``0..n-1``: the first ``ceil(n/2)`` are base, the rest new."""
    n = _check_int(num_classes, "num_classes", 2)
    m = math.ceil(n / 2)
    return list(range(m)), list(range(m, n))


def subsample_classes(
    ds: LabeledImages, class_ids: Sequence[int], name: str | None = None
) -> SubsetImages:
    """The images of ``ds`` whose label is in ``class_ids``, relabelled ``0..len(class_ids)-1``
    in the order given (label ``class_ids[k]`` becomes ``k``)."""
    ids = [_check_int(c, "class id", 0) for c in class_ids]
    if not ids:
        raise DataError("class_ids is empty; pass at least one class")
    if len(set(ids)) != len(ids):
        raise DataError(f"class_ids has duplicates: {ids}")
    bad = [c for c in ids if c >= ds.num_classes]
    if bad:
        raise DataError(f"class ids {bad} out of range for {ds.name!r} ({ds.num_classes} classes)")
    indices = np.flatnonzero(np.isin(ds.labels, ids))
    return SubsetImages(ds, indices, class_ids=ids, name=name or f"{ds.name}/classes{len(ids)}")
