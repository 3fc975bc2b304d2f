"""Few-shot sampling, episode construction and base/new class splits (Dassl conventions)."""

from __future__ import annotations

import numpy as np
import pytest

from pyro_clip.data import (
    base_new_classes,
    load_embedded,
    make_few_shot,
    sample_few_shot,
    subsample_classes,
)
from pyro_clip.data.embedded import _archive
from pyro_clip.errors import DataError

LABELS = np.repeat(np.arange(5), 10)  # 5 classes x 10 examples


@pytest.mark.parametrize("shots", [1, 2, 4, 8])
def test_counts_per_class_sorted_unique(shots: int) -> None:
    idx = sample_few_shot(LABELS, shots, seed=1)
    assert idx.dtype == np.int64
    assert np.array_equal(idx, np.sort(idx)) and len(np.unique(idx)) == len(idx)
    assert np.bincount(LABELS[idx], minlength=5).tolist() == [shots] * 5


def test_deterministic_and_seed_dependent() -> None:
    a = sample_few_shot(LABELS, 4, seed=1)
    assert np.array_equal(a, sample_few_shot(LABELS, 4, seed=1))
    draws = {tuple(sample_few_shot(LABELS, 4, seed=s)) for s in (1, 2, 3)}
    assert len(draws) == 3


def test_matches_an_independent_generator_draw() -> None:
    # the documented recipe: one Generator(seed), classes in ascending order, choice w/o repl.
    rng = np.random.default_rng(7)
    expected = np.sort(
        np.concatenate(
            [rng.choice(np.flatnonzero(np.equal(LABELS, c)), 3, replace=False) for c in range(5)]
        )
    )
    assert np.array_equal(sample_few_shot(LABELS, 3, seed=7), expected)


def test_short_class_gives_all_and_warns() -> None:
    labels = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2, 2])
    with pytest.warns(UserWarning, match=r"\[1\]"):
        idx = sample_few_shot(labels, 3, seed=0)
    assert np.bincount(labels[idx]).tolist() == [3, 2, 3]
    assert {4, 5} <= set(idx.tolist())


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_invalid_shots(bad: object) -> None:
    with pytest.raises(DataError, match="shots"):
        sample_few_shot(LABELS, bad, seed=0)  # type: ignore[arg-type]


def test_invalid_seed_and_labels() -> None:
    with pytest.raises(DataError, match="seed"):
        sample_few_shot(LABELS, 1, seed=-3)
    with pytest.raises(DataError, match="1-D integer"):
        sample_few_shot(LABELS.astype(float), 1, seed=0)


def test_make_few_shot_on_embedded() -> None:
    train, val, test = (load_embedded(s) for s in ("train", "val", "test"))
    ep = make_few_shot(train, val, test, shots=16, seed=2)
    assert np.bincount(ep.train.labels).tolist() == [16] * 10
    assert np.bincount(ep.val.labels).tolist() == [4] * 10  # min(K, 4)
    assert ep.test is test
    small = make_few_shot(train, val, test, shots=2, seed=2)
    assert np.bincount(small.val.labels).tolist() == [2] * 10
    # train and val images come from disjoint official source images
    src = _archive()["train_source_index"]
    labels = _archive()["train_labels"]
    first80 = np.concatenate([np.flatnonzero(labels == c)[:80] for c in range(10)])
    rest = np.setdiff1d(np.arange(1000), first80)
    train_src = set(src[np.sort(first80)][ep.train.indices].tolist())
    val_src = set(src[rest][ep.val.indices].tolist())
    assert train_src and val_src and not train_src & val_src
    # labels of the subset agree with the underlying images' labels
    assert np.array_equal(ep.train.labels, train.labels[ep.train.indices])


def test_val_drawn_from_train_pool_never_overlaps() -> None:
    train, test = load_embedded("train"), load_embedded("test")
    for seed in (1, 2, 3):
        ep = make_few_shot(train, train, test, shots=16, seed=seed)
        assert not set(ep.train.indices.tolist()) & set(ep.val.indices.tolist())
        assert np.bincount(ep.val.labels).tolist() == [4] * 10


@pytest.mark.parametrize(("n", "base", "new"), [(10, 5, 5), (11, 6, 5), (2, 1, 1), (3, 2, 1)])
def test_base_new_split(n: int, base: int, new: int) -> None:
    b, nw = base_new_classes(n)
    assert b == list(range(base)) and nw == list(range(base, n))
    assert len(nw) == new


def test_base_new_rejects_tiny() -> None:
    with pytest.raises(DataError):
        base_new_classes(1)


def test_subsample_classes_relabels() -> None:
    test = load_embedded("test")
    _, new = base_new_classes(10)
    sub = subsample_classes(test, new)
    assert len(sub) == 500
    assert sub.classnames == ["sandal", "shirt", "sneaker", "handbag", "ankle boot"]
    assert np.array_equal(sub.labels, test.labels[sub.indices] - 5)
    swapped = subsample_classes(test, [9, 0])
    assert swapped.classnames == ["ankle boot", "t-shirt"]
    assert set(
        zip(test.labels[swapped.indices].tolist(), swapped.labels.tolist(), strict=True)
    ) == {
        (9, 0),
        (0, 1),
    }
    for bad in ([], [1, 1], [10]):
        with pytest.raises(DataError):
            subsample_classes(test, bad)


def test_few_shot_indices_without_validation_split_hold_out_disjoint_val():
    from pyro_clip.data import few_shot_indices, has_validation_split

    labels = np.repeat(np.arange(3), 10)
    train_idx, val_idx = few_shot_indices(labels, None, shots=8, seed=2)
    assert not set(train_idx) & set(val_idx)
    assert np.bincount(labels[train_idx]).tolist() == [8, 8, 8]
    assert np.bincount(labels[val_idx]).tolist() == [2, 2, 2]  # only 2 left per class
    assert not has_validation_split("imagenet") and has_validation_split("fashion-mnist")
