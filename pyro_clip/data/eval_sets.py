"""Which classes of an extra evaluation set a run can score, checked before any encoding.

A method fitted on the training set's classes predicts over class *names*, so an evaluation
set is usable when every one of its class names is a training class (ImageNet-V2 for
ImageNet; ImageNet-A/-R hold 200 of its 1000 classes). Under base-to-new only the base
classes are trained: the evaluation set is cut to the base classes it holds. Anything else
(Fashion-MNIST-C next to Oxford Pets) would compare unrelated label spaces, or crash on
label indices after every feature had been extracted. Transfer to other classes (CoOp's
cross-data-set protocol) is what ``pyro-clip evaluate`` is for.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from pyro_clip.data.base import LabeledImages
from pyro_clip.errors import DataError


def eval_class_ids(
    eval_name: str,
    eval_classnames: Sequence[str],
    train_name: str,
    train_classnames: Sequence[str],
    keep: Sequence[str] | None = None,
    companions: Sequence[str] = (),
) -> list[int] | None:
    """Check ``eval_name`` against the training classes; the eval-set class ids to keep.

    Returns None when every class of the evaluation set is kept (few-shot protocol), else
    the ids (in the evaluation set's label space) of the classes in ``keep`` (base-to-new:
    the base class names), ordered as ``keep``. Raises ``DataError`` naming the foreign
    classes, or the missing overlap, and what to pass instead.
    """
    hint = (f"its own evaluation sets are {list(companions)}" if companions
            else f"{train_name} has no companion evaluation sets")
    fix = (f"pass --no-eval-datasets or --eval-dataset with a set of the same classes ({hint}); "
           "for cross-data-set transfer to other classes use 'pyro-clip evaluate RUN --dataset "
           f"{eval_name}'")
    foreign = [c for c in eval_classnames if c not in set(train_classnames)]
    if foreign:
        raise DataError(
            f"evaluation set {eval_name!r} has {len(foreign)} of its {len(eval_classnames)} "
            f"classes outside the classes of {train_name!r} (e.g. {foreign[:3]}), so its "
            f"accuracy would compare unrelated labels; {fix}"
        )
    if keep is None:
        return None
    position = {c: i for i, c in enumerate(eval_classnames)}
    ids = [position[c] for c in keep if c in position]
    if not ids:
        raise DataError(
            f"evaluation set {eval_name!r} holds none of the {len(keep)} base classes of "
            f"{train_name!r}, so nothing of it can be scored under base-to-new; {fix}"
        )
    return ids


def check_split_classes(train: LabeledImages, test: LabeledImages, protocol: str) -> None:
    """Refuse data a run cannot score; warn when the test split lacks a training class.

    The model is fitted to (and scored over) every class of ``train``: fewer than two classes
    (or, under base-to-new, fewer than two per half) is an error, as is a test split in
    another label space. A class with no test images is still scored over, not dropped (a
    smaller problem would inflate accuracy), and named in a warning.
    """
    n = train.num_classes
    if n < 2:
        raise DataError(
            f"{train.name} has {n} class ({train.classnames}); classification needs at least "
            "two classes: add a second class folder"
        )
    if protocol == "base-to-new" and n < 4:
        raise DataError(
            f"{train.name} has {n} classes; base-to-new halves them and scores each half "
            "separately, which needs at least 4 classes (2 per half): use --protocol few-shot"
        )
    if list(test.classnames) != list(train.classnames):
        raise DataError(
            f"test split {test.name} has classes {test.classnames[:5]}... but train "
            f"{train.name} has {train.classnames[:5]}...; the splits must share one label space"
        )
    absent = sorted(set(range(n)) - set(np.unique(test.labels).tolist()))
    if absent:
        names = [train.classnames[c] for c in absent]
        warnings.warn(
            f"{test.name} has no images of class(es) {names}; the test split is still scored "
            f"over all {n} classes the model was fitted to",
            stacklevel=2,
        )
