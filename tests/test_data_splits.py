"""Seeded patient-level splits and k-fold cross-validation."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mmcam.data import DataError, kfold_patients, split_patients

IDS = [f"case_{i:03d}" for i in range(10)]


def test_sizes_hand_computed():
    split = split_patients(IDS, val_fraction=0.1, test_fraction=0.2, seed=0)
    assert (len(split.train), len(split.val), len(split.test)) == (7, 1, 2)
    # 0.25 * 10 = 2.5 rounds up to 3; 0.04 * 10 = 0.4 rounds to 0 but a positive fraction gets 1
    split = split_patients(IDS, val_fraction=0.04, test_fraction=0.25, seed=0)
    assert (len(split.train), len(split.val), len(split.test)) == (6, 1, 3)
    split = split_patients(IDS, val_fraction=0.0, test_fraction=0.0, seed=0)
    assert split.train == tuple(IDS) and split.val == split.test == ()


def test_deterministic_order_independent_and_seed_dependent():
    a = split_patients(IDS, seed=5)
    assert split_patients(list(reversed(IDS)), seed=5) == a
    assert split_patients(IDS, seed=5) == a
    others = {split_patients(IDS, seed=s).test for s in range(6, 12)}
    assert len(others | {a.test}) > 1


def test_parts_are_sorted():
    split = split_patients(IDS, val_fraction=0.3, test_fraction=0.3, seed=1)
    for part in (split.train, split.val, split.test):
        assert list(part) == sorted(part)


@given(n=st.integers(3, 60), val=st.floats(0.0, 0.4), test=st.floats(0.0, 0.4),
       seed=st.integers(0, 2**32 - 1))
def test_split_is_a_partition_of_patients(n, val, test, seed):
    ids = [f"p{i}" for i in range(n)]
    try:
        split = split_patients(ids, val_fraction=val, test_fraction=test, seed=seed)
    except DataError as exc:  # only when nothing is left for training
        assert "none for training" in str(exc)
        return
    parts = [set(split.train), set(split.val), set(split.test)]
    assert sum(map(len, parts)) == n and set().union(*parts) == set(ids)
    assert len(split.test) == (0 if test == 0 else max(1, int(test * n + 0.5)))
    assert len(split.val) == (0 if val == 0 else max(1, int(val * n + 0.5)))


@given(n=st.integers(6, 50), folds=st.integers(2, 4), seed=st.integers(0, 1000))
def test_kfold_validates_every_non_test_patient_once(n, folds, seed):
    ids = [f"p{i}" for i in range(n)]
    splits = kfold_patients(ids, folds=folds, test_fraction=0.2, seed=seed)
    test = set(splits[0].test)
    assert all(set(s.test) == test for s in splits)
    assert test == set(split_patients(ids, test_fraction=0.2, seed=seed).test)
    rest = set(ids) - test
    vals = [set(s.val) for s in splits]
    assert sorted(p for v in vals for p in v) == sorted(rest)
    assert max(map(len, vals)) - min(map(len, vals)) <= 1
    for s, v in zip(splits, vals):
        assert set(s.train) == rest - v


def test_kfold_sizes_hand_computed():
    splits = kfold_patients(IDS, folds=3, test_fraction=0.2, seed=0)  # 8 non-test: 3, 3, 2
    assert [len(s.val) for s in splits] == [3, 3, 2]
    assert [len(s.train) for s in splits] == [5, 5, 6]


@pytest.mark.parametrize("kwargs, message", [
    ({"val_fraction": 1.0}, "val_fraction must be a number in"),
    ({"test_fraction": -0.1}, "test_fraction must be a number in"),
    ({"val_fraction": 0.5, "test_fraction": 0.5}, "leave none for training"),
    ({"seed": -1}, "seed must be a non-negative int"),
])
def test_bad_split_arguments(kwargs, message):
    with pytest.raises(DataError, match=message):
        split_patients(IDS, **kwargs)


def test_duplicates_and_bad_folds():
    with pytest.raises(DataError, match="unique"):
        split_patients(["a", "b", "a"])
    with pytest.raises(DataError, match="folds must be an int >= 2"):
        kfold_patients(IDS, folds=1)
    with pytest.raises(DataError, match="8 non-test patients cannot fill 9 folds"):
        kfold_patients(IDS, folds=9)
